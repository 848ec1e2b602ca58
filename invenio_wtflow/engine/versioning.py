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
from sqlalchemy import BigInteger, Sequence, bindparam, event, text
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlalchemy_continuum import version_class
from sqlalchemy_continuum.operation import Operation

_CHANGED = "wtflow_changed_rows"
"""Key, in ``Session.info``, of the rows to version at the commit."""


def _continuum(session):
    """Continuum's unit of work for the session's connection."""
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
    copied = [c.key for c in versions.columns if c.key in table.columns]
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
        raise NotImplementedError(
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


@lru_cache(maxsize=None)
def _first_copy_statement(model, operation, transactions, columns, dialect):
    """Insert Continuum's transaction row and copy rows under it, in one statement.

    PostgreSQL only (a data-modifying ``WITH``). The transaction is new, so no
    version of it exists yet: a plain ``INSERT ... SELECT``. Text, like
    :func:`_copy_statement`: SQLAlchemy would walk the whole construct on
    every execution to find its compiled form. Returns the transaction's id.

    :param transactions: Continuum's transaction table.
    :param columns: the names of the transaction's values (``tx_<name>``
        parameters).
    """
    table = model.__table__
    versions = version_class(model).__table__
    quote = dialect.identifier_preparer.quote
    key = table.primary_key.columns[0]
    tx_key = transactions.primary_key.columns[0]
    names, values = list(columns), [f":tx_{c}" for c in columns]
    if isinstance(tx_key.default, Sequence):
        sequence = dialect.identifier_preparer.format_sequence(tx_key.default)
        names.insert(0, tx_key.name)
        values.insert(0, f"nextval('{sequence}')")
    copied = [c.key for c in versions.columns if c.key in table.columns]
    source = quote(table.name)
    sql = (
        f"WITH wtflow_transaction AS (INSERT INTO {quote(transactions.name)} "
        f"({', '.join(quote(n) for n in names)}) VALUES ({', '.join(values)}) "
        f"RETURNING {quote(tx_key.name)}), "
        f"wtflow_versions AS (INSERT INTO {quote(versions.name)} "
        f"({', '.join(quote(c) for c in [*copied, 'transaction_id', 'operation_type'])}) "
        f"SELECT {', '.join(f'{source}.{quote(c)}' for c in copied)}, "
        f"wtflow_transaction.{quote(tx_key.name)}, {int(operation)} "
        f"FROM {source}, wtflow_transaction WHERE {source}.{quote(key.name)} IN :ids) "
        f"SELECT {quote(tx_key.name)} FROM wtflow_transaction"
    )
    return text(sql).bindparams(
        bindparam("ids", expanding=True, type_=key.type),
        *(bindparam(f"tx_{c}", type_=transactions.c[c].type) for c in columns),
    )


def _copy_first(session, model, ids, operation):
    """Record the transaction and copy rows under it (see :func:`_first_copy_statement`).

    Continuum is not told about the row: this runs after the session's last
    flush, so no version of Continuum's follows in this transaction.

    :returns: the transaction's id.
    """
    continuum = _continuum(session)
    transactions = continuum.manager.transaction_cls.__table__
    values = continuum.transaction_args(session)
    if "issued_at" in transactions.c and "issued_at" not in values:
        values["issued_at"] = transactions.c.issued_at.default.arg(None)
    statement = _first_copy_statement(
        model,
        operation,
        transactions,
        tuple(sorted(values)),
        session.get_bind().dialect,
    )
    ids = sorted(ids, key=str)
    params = {f"tx_{name}": value for name, value in values.items()}
    tx_id = session.execute(statement, {**params, "ids": ids[:_CHUNK]}).scalar_one()
    _copy(session, model, ids[_CHUNK:], operation, tx_id)
    return tx_id


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
    tx_id = None  # on PostgreSQL, the first copy inserts the transaction row
    if (
        _continuum(session).current_transaction is not None
        or session.get_bind().dialect.name != "postgresql"
    ):
        tx_id = transaction_id(session)
    for model, operations in pending.items():
        for operation in (Operation.INSERT, Operation.UPDATE):
            ids = [id_ for id_, op in operations.items() if op == operation]
            if not ids:
                continue
            if tx_id is None:
                tx_id = _copy_first(session, model, ids, operation)
            else:
                _copy(session, model, ids, operation, tx_id)


@event.listens_for(Session, "after_rollback")
def _forget_changed_rows(session):
    """Forget the rows of a transaction that was rolled back."""
    session.info.pop(_CHANGED, None)
