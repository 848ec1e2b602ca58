# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Version rows for what the engine writes with Core statements.

SQLAlchemy-Continuum versions what the ORM flushes. The engine's hot path
(creating a run's tasks, claiming an attempt, recording its success) writes
with Core statements instead, and versions those rows itself, in the same
transaction, as DESIGN.md allows in its note on invariant 3:

- :func:`insert` inserts new rows in bulk and :func:`changed` notes the rows
  a Core ``UPDATE`` changed;
- just before the commit, after the session's last flush, each of those rows
  is copied into its version table (``INSERT ... SELECT``), under the
  transaction Continuum records for this one. A row the ORM changed too in
  the same transaction keeps a single version, with its final values (and
  the ``INSERT`` operation if it is new).

On PostgreSQL, when no ORM flush has recorded the transaction yet (the hot
path's usual case), the transaction row and the first copy are one
statement: the row is inserted by a data-modifying ``WITH`` clause.
"""

from functools import lru_cache

from flask import current_app
from sqlalchemy import BigInteger, Sequence, String, bindparam, event, text
from sqlalchemy.orm import Session, make_transient_to_detached, scoped_session
from sqlalchemy_continuum import version_class
from sqlalchemy_continuum.operation import Operation

from ..errors import UnsupportedDatabaseError
from . import prepared

_CHANGED = "wtflow_changed_rows"
"""Key, in ``Session.info``, of the rows to version at the commit."""


def _continuum(session):
    """Continuum's unit of work for the session's connection.

    Continuum forgets a unit of work at the commit by the session it was
    made for: a scoped session stands for its current session here.
    """
    if isinstance(session, scoped_session):
        session = session()
    manager = current_app.extensions["invenio-db"].versioning_manager
    return manager.unit_of_work(session)


def transaction_id(session):
    """Return the id of Continuum's transaction row for the current transaction.

    The row is inserted now, with one Core ``INSERT``, if no flush has
    inserted it yet, and handed to Continuum: a later ORM flush in the same
    transaction versions its changes under it.

    :param session: the session whose transaction it is.
    """
    continuum = _continuum(session)
    if continuum.current_transaction is None:
        model = continuum.manager.transaction_cls
        values = continuum.transaction_args(session)
        result = session.execute(model.__table__.insert().values(**values))
        transaction = model(id=result.inserted_primary_key[0], **values)
        make_transient_to_detached(transaction)
        session.add(transaction)
        continuum.current_transaction = transaction
    return continuum.current_transaction.id


def insert(session, model, rows):
    """Insert rows of a versioned model in bulk, versioned at the commit.

    One ``executemany`` instead of an ORM flush; their first versions
    (operation ``INSERT``) are copied from the table at the commit, with
    whatever the transaction changed in them since.

    :param session: the session.
    :param model: the versioned model class.
    :param rows: the new rows, as dictionaries with every column of the table.
    """
    if not rows:
        return
    session.execute(model.__table__.insert(), rows)
    pending = _pending(session, model)
    key = model.__table__.primary_key.columns[0].key
    pending.update((row[key], Operation.INSERT) for row in rows)


def changed(session, model, ids):
    """Version rows a Core statement changed, at the commit.

    :param session: the session whose transaction changed them.
    :param model: the versioned model class.
    :param ids: the primary keys of the changed rows.
    """
    pending = _pending(session, model)
    for id_ in ids:
        pending.setdefault(id_, Operation.UPDATE)


def _pending(session, model):
    """The rows of ``model`` to version at the commit: id -> operation."""
    return session.info.setdefault(_CHANGED, {}).setdefault(model, {})


_CHUNK = 1000
"""Rows copied by one statement (SQLite limits a statement's parameters)."""


@lru_cache(maxsize=None)
def _copy_statement(model, operation, dialect):
    """The ``INSERT ... SELECT`` that copies rows of ``model`` into its versions.

    Written as text once per model, operation and dialect: SQLAlchemy does
    not cache the compiled form of a dialect's upsert. A row that already has
    a version in this transaction (the ORM changed it too) gets that version
    updated; its operation is kept, unless this one is the row's ``INSERT``.
    """
    table = model.__table__
    versions = version_class(model).__table__
    quote = dialect.identifier_preparer.quote
    copied = copied_columns(model)
    keys = [c.key for c in table.primary_key.columns]
    columns = [*copied, "transaction_id", "operation_type"]
    kept = {*keys, "transaction_id"}
    if operation != Operation.INSERT:
        kept.add("operation_type")
    updated = [quote(c) for c in columns if c not in kept]
    if dialect.name in ("postgresql", "sqlite"):
        conflict = ", ".join(quote(c) for c in [*keys, "transaction_id"])
        assignments = ", ".join(f"{c} = excluded.{c}" for c in updated)
        upsert = f"ON CONFLICT ({conflict}) DO UPDATE SET {assignments}"
    elif dialect.name in ("mysql", "mariadb"):
        assignments = ", ".join(f"{c} = VALUES({c})" for c in updated)
        upsert = f"ON DUPLICATE KEY UPDATE {assignments}"
    else:
        raise UnsupportedDatabaseError(
            f"invenio-wtflow versions its Core updates on PostgreSQL, SQLite and "
            f"MySQL, not on {dialect.name}."
        )
    sql = (
        f"INSERT INTO {quote(versions.name)} "
        f"({', '.join(quote(c) for c in columns)}) "
        f"SELECT {', '.join(quote(c) for c in copied)}, :transaction_id, "
        f"{int(operation)} FROM {quote(table.name)} "
        f"WHERE {quote(keys[0])} IN :ids {upsert}"
    )
    return text(sql).bindparams(
        bindparam("ids", expanding=True, type_=table.columns[keys[0]].type),
        bindparam("transaction_id", type_=BigInteger()),
    )


def transaction_values(session):
    """Continuum's transaction table, and the values of this transaction's row.

    :param session: the session whose transaction it is.
    :returns: ``(table, values)``; ``values`` maps column names to values.
    """
    manager = current_app.extensions["invenio-db"].versioning_manager
    transactions, issued_at = _transaction_table(manager.transaction_cls)
    # Continuum's plugins give them; a unit of work of its own asks them,
    # without the session's (which would begin the session's transaction).
    values = manager.uow_class(manager).transaction_args(session)
    if issued_at is not None and "issued_at" not in values:
        values["issued_at"] = issued_at(None)
    return transactions, values


@lru_cache(maxsize=None)
def _transaction_table(transaction_cls):
    """Continuum's transaction table, and its ``issued_at`` default (or ``None``)."""
    transactions = transaction_cls.__table__
    column = transactions.c.get("issued_at")
    return transactions, None if column is None else column.default.arg


def transaction_parameters(transactions, values):
    """The ``tx_<name>`` parameters of :func:`transaction_cte`, typed."""
    return [bindparam(f"tx_{name}", type_=transactions.c[name].type) for name in values]


def transaction_cte(transactions, columns, dialect, when=None):
    """``wtflow_transaction AS (INSERT ...)``: Continuum's transaction row, in SQL.

    PostgreSQL only (a data-modifying ``WITH``); the row's id is
    ``wtflow_transaction.id`` to the rest of the statement.

    :param transactions: Continuum's transaction table.
    :param columns: the names of the row's values (``tx_<name>`` parameters).
    :param when: a condition for inserting the row at all (``EXISTS (...)``).
    """
    quote = dialect.identifier_preparer.quote
    tx_key = transactions.primary_key.columns[0]
    names, values = list(columns), [f":tx_{c}" for c in columns]
    if isinstance(tx_key.default, Sequence):
        sequence = dialect.identifier_preparer.format_sequence(tx_key.default)
        names.insert(0, tx_key.name)
        values.insert(0, f"nextval('{sequence}')")
    return (
        f"wtflow_transaction AS (INSERT INTO {quote(transactions.name)} "
        f"({', '.join(quote(n) for n in names)}) SELECT {', '.join(values)}"
        f"{f' WHERE {when}' if when else ''} "
        f"RETURNING {quote(tx_key.name)} AS id)"
    )


def copied_columns(model):
    """The columns of ``model`` that its version table keeps."""
    table = model.__table__
    return [c.key for c in version_class(model).__table__.columns if c.key in table.c]


def version_copy(model, operation, dialect, source, where=None):
    """``INSERT INTO <versions> ... SELECT ... FROM <source>``, under ``wtflow_transaction``.

    PostgreSQL only, inside a statement that has :func:`transaction_cte`.
    The transaction is new, so no version of it exists yet: a plain insert.

    :param source: what to copy from: the table itself or a ``WITH`` name
        holding the rows as they are now (an ``UPDATE ... RETURNING``).
    :param where: which of its rows to copy (all of them by default).
    """
    quote = dialect.identifier_preparer.quote
    copied = copied_columns(model)
    columns = [*copied, "transaction_id", "operation_type"]
    return (
        f"INSERT INTO {quote(version_class(model).__table__.name)} "
        f"({', '.join(quote(c) for c in columns)}) "
        f"SELECT {', '.join(f'{source}.{quote(c)}' for c in copied)}, "
        f"wtflow_transaction.id, {int(operation)} "
        f"FROM {source}, wtflow_transaction{f' WHERE {where}' if where else ''}"
    )


@lru_cache(maxsize=None)
def _first_copy_statement(groups, transactions, columns, dialect):
    """Insert Continuum's transaction row and copy rows under it, in one statement.

    PostgreSQL only (a data-modifying ``WITH``). Text, like
    :func:`_copy_statement`: SQLAlchemy would walk the whole construct on
    every execution to find its compiled form. Returns the transaction's id.

    :param groups: ``(model, operation)`` pairs; the ids of the rows of
        each are the parameter ``ids_<index>``, an array literal (one
        parameter whatever their number: the statement is prepared once,
        see :mod:`~invenio_wtflow.engine.prepared`).
    :param transactions: Continuum's transaction table.
    :param columns: the names of the transaction's values (``tx_<name>``
        parameters).
    """
    quote = dialect.identifier_preparer.quote
    copies, ids = [], []
    for index, (model, operation) in enumerate(groups):
        table = model.__table__
        key = table.primary_key.columns[0]
        source = quote(table.name)
        array = f"{key.type.compile(dialect=dialect)}[]"
        where = f"{source}.{quote(key.name)} = ANY(CAST(:ids_{index} AS {array}))"
        copy = version_copy(model, operation, dialect, source, where)
        copies.append(f"wtflow_versions_{index} AS ({copy})")
        ids.append(bindparam(f"ids_{index}", type_=String()))
    sql = (
        f"WITH {transaction_cte(transactions, columns, dialect)}, "
        f"{', '.join(copies)} SELECT id FROM wtflow_transaction"
    )
    return text(sql).bindparams(*ids, *transaction_parameters(transactions, columns))


def _copy_first(session, groups):
    """Record the transaction and copy rows under it (see :func:`_first_copy_statement`).

    Continuum is not told about the row: this runs after the session's last
    flush, so no version of Continuum's follows in this transaction.

    :param groups: ``(model, operation, ids)`` triples, none empty.
    :returns: the transaction's id.
    """
    transactions, values = transaction_values(session)
    statement = _first_copy_statement(
        tuple((model, op) for model, op, _ in groups),
        transactions,
        tuple(sorted(values)),
        session.get_bind().dialect,
    )
    params = {f"tx_{name}": value for name, value in values.items()}
    for index, (_, _, ids) in enumerate(groups):
        params[f"ids_{index}"] = "{" + ",".join(sorted(map(str, ids))) + "}"
    return prepared.execute(session, statement, params).one()[0]


def _copy(session, model, ids, operation, tx_id):
    """Copy rows into their version table, as they are now, under ``tx_id``."""
    statement = _copy_statement(model, operation, session.get_bind().dialect)
    ids = sorted(ids, key=str)
    for start in range(0, len(ids), _CHUNK):
        session.execute(
            statement, {"ids": ids[start : start + _CHUNK], "transaction_id": tx_id}
        )


@event.listens_for(Session, "before_commit")
def _version_changed_rows(session):
    """Write the versions of the rows noted by :func:`changed`."""
    if _CHANGED not in session.info or session.in_nested_transaction():
        return
    session.flush()
    pending = session.info.pop(_CHANGED)
    groups = [
        (model, operation, ids)
        for model, operations in pending.items()
        for operation in (Operation.INSERT, Operation.UPDATE)
        if (ids := [id_ for id_, op in operations.items() if op == operation])
    ]
    if not groups:
        return
    if (
        _continuum(session).current_transaction is None
        and session.get_bind().dialect.name == "postgresql"
    ):
        _copy_first(session, groups)  # the transaction row and every copy
        return
    tx_id = transaction_id(session)
    for model, operation, ids in groups:
        _copy(session, model, ids, operation, tx_id)


@event.listens_for(Session, "after_rollback")
def _forget_changed_rows(session):
    """Forget the rows of a transaction that was rolled back."""
    session.info.pop(_CHANGED, None)
