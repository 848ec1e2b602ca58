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
"""

from flask import current_app
from sqlalchemy import event, literal, select
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.orm import Session
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

    The row is inserted now if no flush has inserted it yet; a later ORM
    flush in the same transaction reuses it.

    :param session: the session whose transaction it is.
    """
    continuum = _continuum(session)
    if continuum.current_transaction is None:
        continuum.create_transaction(session)
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


def _upsert(session, table):
    """An ``INSERT`` into ``table`` that can update the row it collides with."""
    dialect = session.get_bind().dialect.name
    for module in (postgresql, sqlite, mysql):
        if module.dialect.name == dialect:
            return module.insert(table)
    raise NotImplementedError(
        f"invenio-wtflow versions its Core updates on PostgreSQL, SQLite and "
        f"MySQL, not on {dialect}."
    )


_CHUNK = 1000
"""Rows copied by one statement (SQLite limits a statement's parameters)."""


def _copy(session, model, ids, operation, tx_id):
    """Copy rows into their version table, as they are now, under ``tx_id``.

    A row that already has a version in this transaction (the ORM changed it
    too) gets that version updated: its operation is kept, unless this one is
    the row's ``INSERT``.
    """
    table = model.__table__
    versions = version_class(model).__table__
    copied = [c.key for c in versions.columns if c.key in table.columns]
    keys = [c.key for c in table.primary_key.columns]
    columns = [*copied, "transaction_id", "operation_type"]
    kept = {*keys, "transaction_id"}
    if operation != Operation.INSERT:
        kept.add("operation_type")
    ids = sorted(ids, key=str)
    for start in range(0, len(ids), _CHUNK):
        rows = select(
            *(table.columns[key] for key in copied),
            literal(tx_id),
            literal(operation),
        ).where(table.primary_key.columns[0].in_(ids[start : start + _CHUNK]))
        statement = _upsert(session, versions).from_select(columns, rows)
        if hasattr(statement, "on_duplicate_key_update"):
            new = statement.inserted
            statement = statement.on_duplicate_key_update(
                {k: new[k] for k in columns if k not in kept}
            )
        else:
            new = statement.excluded
            statement = statement.on_conflict_do_update(
                index_elements=[*keys, "transaction_id"],
                set_={k: new[k] for k in columns if k not in kept},
            )
        session.execute(statement)


@event.listens_for(Session, "before_commit")
def _version_changed_rows(session):
    """Write the versions of the rows noted by :func:`changed`."""
    if _CHANGED not in session.info or session.in_nested_transaction():
        return
    session.flush()
    pending = session.info.pop(_CHANGED)
    tx_id = transaction_id(session)
    for model, operations in pending.items():
        for operation in (Operation.INSERT, Operation.UPDATE):
            ids = [id_ for id_, op in operations.items() if op == operation]
            if ids:
                _copy(session, model, ids, operation, tx_id)


@event.listens_for(Session, "after_rollback")
def _forget_changed_rows(session):
    """Forget the rows of a transaction that was rolled back."""
    session.info.pop(_CHANGED, None)
