# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""SQLite as the embedded database: real transactions, one writer at a time.

The sqlite3 driver starts transactions lazily, at the first write, which
breaks savepoints and lets two transactions read the same row before either
writes it. Once :func:`serialise_sqlite_transactions` is installed, SQLAlchemy
decides where transactions begin; the engine's own transactions (see
:func:`~invenio_wtflow.engine.orchestrator.atomic`) begin with
``BEGIN IMMEDIATE``, which takes the write lock at once: that is the lock the
orchestrator relies on where PostgreSQL has ``SELECT ... FOR UPDATE``. Other
transactions (reads of the API, a task body) begin deferred, and the database
runs in WAL mode so that readers never block the writer.
"""

import sqlite3
from contextvars import ContextVar

from sqlalchemy import event
from sqlalchemy.engine import Engine

_writing = ContextVar("wtflow_sqlite_writing", default=False)


class writer:
    """Begin SQLite transactions opened inside the block as writers.

    A class rather than a generator: every engine transaction enters one,
    on every database.
    """

    __slots__ = ("_token",)

    def __enter__(self):
        """Mark the transactions begun from now on as writers."""
        self._token = _writing.set(True)

    def __exit__(self, *exc_info):
        """Restore the mark as it was before the block."""
        _writing.reset(self._token)


def _on_connect(dbapi_connection, connection_record):
    if isinstance(dbapi_connection, sqlite3.Connection):
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("PRAGMA journal_mode=WAL")


def _on_begin(conn):
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE" if _writing.get() else "BEGIN")


def serialise_sqlite_transactions():
    """Install the listeners, once per process, for SQLite engines only."""
    if not event.contains(Engine, "connect", _on_connect):
        event.listen(Engine, "connect", _on_connect)
        event.listen(Engine, "begin", _on_begin)
