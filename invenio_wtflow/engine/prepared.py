# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""PostgreSQL through psycopg2: the hot path's statements, prepared once per connection.

PostgreSQL parses and plans a statement each time it receives its text: for
the claim (see :mod:`~invenio_wtflow.engine.fused`) that is about two thirds
of its time. psycopg 3 prepares the statements a connection runs often;
psycopg2 sends text every time. On psycopg2 connections, :func:`execute`
prepares a statement (``PREPARE``) the first time a connection runs it and
executes it by name (``EXECUTE``) from then on. A prepared statement lives as
long as its connection (SQLAlchemy's pool forgets which ones a connection
has when it connects again), and outlives a rollback.

``EXECUTE`` goes to the driver as it is (``exec_driver_sql``), with the
parameters and the columns converted by their SQLAlchemy types here: that
skips the work ``Session.execute`` does per statement to match a textual
statement's columns to the cursor's, which cost more CPU than the round
trip itself. The rows answer to their column names, as SQLAlchemy's do.
When nothing watches the engine's statements (no cursor event listener, no
statement log), ``EXECUTE`` goes on the driver's cursor itself, without
SQLAlchemy's execution context either.

Turn it off with ``WTFLOW_PREPARED_STATEMENTS = False`` where one database
session serves several clients, as PgBouncer does in transaction pooling
mode: a statement prepared in one session is unknown to the next.

A transaction that is one message goes on a connection of its own in
autocommit mode (:func:`alone`): a claim or a creation with either driver,
a success (a lock and its statement together) through prepared statements.
Such a message may commit without waiting for PostgreSQL to flush its WAL
(``synchronous_commit``, see :func:`execute`); a session that must not
return before the flush waits for it later with :func:`await_flush`.
"""

import hashlib
import logging
import re
import weakref
from collections import namedtuple
from contextlib import contextmanager
from functools import lru_cache

from flask import current_app
from sqlalchemy import Engine, event
from sqlalchemy.exc import MultipleResultsFound, NoResultFound
from sqlalchemy.orm import scoped_session

from .waiting import LISTENING

_PREPARED = "wtflow_prepared"
"""Key, in a connection's ``info``, of the names prepared on it."""

_PARAMETER = re.compile(r"%\((\w+)\)s")


def enabled(session):
    """Whether :func:`execute` prepares the session's statements (psycopg2)."""
    return _enabled(session.get_bind().dialect)


def _enabled(dialect):
    """Whether :func:`execute` prepares statements on ``dialect``'s connections."""
    return (
        dialect.driver == "psycopg2"
        and current_app.config["WTFLOW_PREPARED_STATEMENTS"]
    )


@contextmanager
def alone(session):
    """A connection of its own, in autocommit mode, for a transaction of one message.

    A statement that is a whole transaction (a claim), or a message that is
    (see :func:`execute`), then commits as it ends, as durably, in one round
    trip: no ``BEGIN`` and no ``COMMIT`` on the wire, and none of the
    session's work to begin, commit and close a transaction. Yields
    ``None`` (send it through the session, in its transaction) off
    PostgreSQL, or where the session has begun a transaction or is bound
    to a connection (an outer transaction, as in pytest-invenio's ``db``
    fixture).

    A claim whose answer is lost so is committed unknown to its worker
    (before, only a lost ``COMMIT`` answer did that): the attempt runs
    again once its lease ends. A run's creation is sent so only as one
    statement that a retry with the same run id cannot repeat (see
    :func:`~invenio_wtflow.engine.fused.create`).

    The driver's connection is switched itself, not through SQLAlchemy's
    ``isolation_level`` option: psycopg2 then sends ``SET
    default_transaction_isolation`` both ways, two round trips more. It is
    switched back as the pool takes it back.

    :param session: the session whose engine to connect to.
    """
    if isinstance(session, scoped_session):
        session = session()
    engine = session.get_bind()
    if (
        session.in_transaction()
        or not isinstance(engine, Engine)
        or engine.dialect.name != "postgresql"
    ):
        yield None
        return
    if engine not in _SWITCHING:
        event.listen(engine, "reset", _back_to_transactions)
        _SWITCHING.add(engine)
    with engine.connect() as connection:
        pooled = connection.connection
        pooled.dbapi_connection.autocommit = True
        pooled.info[_ALONE] = True
        yield connection


_ALONE = "wtflow_alone"
"""Key, in a pooled connection's ``info``, of a connection :func:`alone` switched."""

_SWITCHING = weakref.WeakSet()
"""The engines whose pool switches connections back (see :func:`alone`)."""


def _back_to_transactions(dbapi_connection, record, reset_state):
    """Switch a connection :func:`alone` used back as the pool takes it back."""
    if record is None:  # a connection detached from the pool
        return
    if record.info.pop(_ALONE, False) and not dbapi_connection.closed:
        dbapi_connection.autocommit = False


def execute(
    session, statement, params, before=None, connection=None, synchronous_commit=True
):
    """Execute ``statement``, prepared on psycopg2 connections when enabled.

    :param session: the session whose connection runs it (unless
        ``connection`` is given).
    :param statement: a statement without expanding parameters, whose rows
        come from its selected columns (text or Core, not ORM entities).
    :param params: its parameters.
    :param before: ``(statement, params)`` of a statement to execute just
        before, whose rows are not kept. Prepared, the two ``EXECUTE``
        statements go in one message (one round trip; in autocommit mode, one transaction,
        in which each still reads what was committed before it began).
    :param connection: a connection from :func:`alone` to send it on
        instead of the session's (``None``: the session's).
    :param synchronous_commit: ``False``: prepared, on a connection of its
        own (the message is the transaction), commit without waiting for
        the WAL flush (``SET LOCAL synchronous_commit TO off`` in the same
        message; see :func:`commits_unflushed`). Other transactions see the
        changes at once; a crash of the server before the flush forgets
        them, and any later commit that waits for its own flush makes them
        durable too (the WAL is flushed in order). :data:`IF_CAUGHT_UP`:
        the same, only when every commit before the message is flushed
        already and no synchronous standby is configured; otherwise wait,
        so that a crash could forget this transaction alone.
    :returns: the result, as ``session.execute`` returns it; prepared, or on
        a connection of its own, a :class:`Rows` with the same ``all``,
        ``one`` and ``one_or_none``.
    """
    dialect = (session.get_bind() if connection is None else connection).dialect
    if not _enabled(dialect):
        target = session if connection is None else connection
        if before is not None:
            if connection is not None:
                raise RuntimeError(
                    "Two statements sent apart in autocommit mode would be two "
                    "transactions: prepared statements are needed."
                )
            target.execute(*before)
        result = target.execute(statement, params)
        return result if connection is None else Rows(result.all())
    plan = _prepared(statement, dialect)
    plans = [plan] if before is None else [_prepared(before[0], dialect), plan]
    own = connection is not None
    if connection is None:
        connection = session.connection()
    names = connection.info.setdefault(_PREPARED, set())
    for each in plans:
        if each.name not in names:
            connection.exec_driver_sql(each.prepare)
            names.add(each.name)
    sql, values = plan.run, plan.parameters(params)
    if before is not None:
        first = plans[0]
        sql = f"{first.run_before}; {sql}"
        values.update(first.parameters(before[1], before=True))
    if not own:
        return _run(connection, plan, sql, values)
    if synchronous_commit == IF_CAUGHT_UP:
        sql = f"{_UNFLUSHED_IF_CAUGHT_UP}{sql}"
    elif not synchronous_commit:
        sql = f"{_UNFLUSHED_COMMIT}{sql}"
    with _Unlistening(connection, sql) as message:
        return _run(connection, plan, message, values)


class _Unlistening:
    """The message ``sql``, made to drop a channel the connection still listens on.

    A channel a finished wait left listening on a connection of its own
    (see :func:`~invenio_wtflow.engine.waiting.wait`) is dropped by the next
    message sent alone on it: in autocommit mode, the ``UNLISTEN`` commits
    with the statement, and is forgotten with it if the message fails.
    (A class, not a generator: it wraps every message sent alone.)
    """

    __slots__ = ("connection", "stale", "message")

    def __init__(self, connection, sql):
        """Take the channel off the connection, and write it into the message."""
        self.connection = connection
        self.stale = stale = connection.info.pop(LISTENING, None)
        self.message = sql if stale is None else f"UNLISTEN {stale}; {sql}"

    def __enter__(self):
        """The message to send."""
        return self.message

    def __exit__(self, kind, error, traceback):
        """After a failed message, the connection still listens on the channel."""
        stale, connection = self.stale, self.connection
        if kind is not None and stale is not None and not connection.invalidated:
            connection.info[LISTENING] = stale  # rolled back with the statement


_UNFLUSHED_COMMIT = "SET LOCAL synchronous_commit TO off; "
"""What a message begins with to commit without waiting for its flush."""

IF_CAUGHT_UP = "if-caught-up"
"""``synchronous_commit`` of :func:`execute`: unflushed only if nothing before it is."""

_UNFLUSHED_IF_CAUGHT_UP = (
    "SELECT set_config('synchronous_commit', CASE WHEN "
    "current_setting('synchronous_standby_names') = '' AND "
    "pg_current_wal_flush_lsn() >= pg_current_wal_insert_lsn() THEN 'off' "
    "ELSE current_setting('synchronous_commit') END, true); "
)
"""What a message begins with to commit unflushed only if the WAL is flushed up to it.

Read before the message's own statements write anything: the WAL
inserted so far (every commit before it, and what transactions in progress
wrote) is all flushed, or the commit waits as the server's setting says.
The setting is read at the commit, and ends with the message's transaction.
Conservative: WAL written by a transaction still in progress, or an insert
position just past a page header, makes the commit wait when it need not.
The server's own flush is all it can see: where synchronous standbys are
configured (``synchronous_standby_names``), the commit always waits, so
that it waits for them as the server's setting says.
"""

_UNFLUSHED = "wtflow_unflushed"
"""Key, in a session's ``info``: a commit it sent is not known to be flushed."""

_FLUSH = "SELECT pg_logical_emit_message(true, 'wtflow', '')"
"""A transaction whose commit waits for the WAL flush, and so for every commit before it.

PostgreSQL waits for the flush at a commit (``synchronous_commit`` on, the
default) only when the transaction wrote WAL before its commit record:
taking a transaction id alone (``pg_current_xact_id()``) writes none, and
commits without waiting. The smallest write anyone may make is a
transactional logical decoding message (prefix ``wtflow``, empty): it
takes an id and writes one small record, and the commit then flushes the
WAL up to it, which covers every transaction committed before it. Logical
decoding clients that ask for messages see it; it changes no table.
"""


def commits_unflushed(session, connection):
    """Whether :func:`execute` on ``connection`` can commit without waiting for its flush.

    :param connection: a connection from :func:`alone`, or ``None``.
    """
    return connection is not None and enabled(session)


def unflushed(session):
    """Note that the session sent a commit without waiting for its flush.

    Noted before the message is sent: a commit whose answer is lost may
    have happened. :func:`await_flush` then waits for the flush.
    """
    session.info[_UNFLUSHED] = True


def awaits_flush(session):
    """Whether the session sent a commit not known to be flushed yet."""
    return bool(session.info.get(_UNFLUSHED))


def await_flush(session):
    """Return once what the session committed unflushed is flushed (see :func:`unflushed`).

    One round trip, on a connection of its own, for a transaction that
    writes one logical decoding message (``_FLUSH``): its commit
    waits for the WAL up to it, and the commits before it with it. Nothing
    to wait for, nothing is sent. A lost connection raises, and the session
    still waits next time.

    :param session: the session that sent the commits.
    """
    if not awaits_flush(session):
        return
    with alone(session) as own:
        if own is None:  # a transaction of the session's: commit one apart
            with session.get_bind().engine.connect() as connection:
                connection.exec_driver_sql(_FLUSH)
                connection.commit()
        else:
            with _Unlistening(own, _FLUSH) as message:
                if _watched(own):
                    own.exec_driver_sql(message)
                else:
                    _sent(own, message, None)
    session.info.pop(_UNFLUSHED, None)


def _run(connection, plan, sql, values):
    """Send the message ``sql``; return the rows of its last statement."""
    if _watched(connection):
        result = connection.exec_driver_sql(sql, values)
        if not result.returns_rows:
            return Rows([])
        cursor = result.cursor
        try:
            return Rows(plan.rows(cursor.description, cursor.fetchall()))
        finally:
            result.close()
    description, rows = _sent(connection, sql, values)
    return Rows(plan.rows(description, rows) if description else [])


def _watched(connection):
    """Whether something sees the statements of ``connection`` as SQLAlchemy sends them.

    A listener of its cursor events or of its dialect's ``do_execute``, on the
    engine or the connection (Sentry's and OpenTelemetry's SQLAlchemy
    integrations, a test counting statements), or the engine's statement log
    (``echo``). Checked at every statement: a listener may come later.
    """
    dispatch = connection.dispatch
    return bool(
        dispatch.before_cursor_execute
        or dispatch.after_cursor_execute
        or connection.dialect.dispatch.do_execute
        or connection.engine.logger.isEnabledFor(logging.INFO)
    )


def _sent(connection, sql, values):
    """Send ``EXECUTE`` on the driver's cursor; return its description and rows.

    What :meth:`~sqlalchemy.engine.Connection.exec_driver_sql` does, for a
    statement nothing watches (see :func:`_watched`), without its execution
    context and result: in the worker, about a tenth of a millisecond per
    statement. A driver error, or an exit exception (a ``KeyboardInterrupt``,
    a greenlet killed), goes through SQLAlchemy's own handling, as it would
    from ``exec_driver_sql``: a driver error is raised as a
    :class:`~sqlalchemy.exc.DBAPIError` (``handle_error`` listeners see it),
    and a lost connection is invalidated (the pool's older ones recycled),
    so that :func:`~.orchestrator.atomic` retries on a new one. Any other
    exception (Celery's soft time limit) passes through as it is.

    SQLAlchemy's handling is its ``Connection._handle_dbapi_exception``,
    not a public API: the tests of this function pin what it does.
    """
    dbapi_error = connection.dialect.loaded_dbapi.Error
    cursor = connection.connection.dbapi_connection.cursor()
    try:
        cursor.execute(sql, values)
        description = cursor.description
        return description, cursor.fetchall() if description else []
    except BaseException as error:
        if isinstance(error, Exception) and not isinstance(error, dbapi_error):
            raise
        connection._handle_dbapi_exception(error, sql, values, cursor, None)
    finally:
        cursor.close()


class Rows(list):
    """The rows of a prepared statement, each a named tuple of its columns."""

    def all(self):
        """Every row, as :meth:`sqlalchemy.engine.Result.all`."""
        return list(self)

    def one_or_none(self):
        """The only row or ``None``; more than one is an error."""
        if len(self) > 1:
            raise MultipleResultsFound(
                "Multiple rows were found when one or none was required"
            )
        return self[0] if self else None

    def one(self):
        """The only row; none or more than one is an error."""
        if not self:
            raise NoResultFound("No row was found when one was required")
        return self.one_or_none()


class _Plan:
    """A statement's name, ``PREPARE`` and ``EXECUTE``, and its type conversions."""

    def __init__(self, name, prepare, run, compiled, order, dialect):
        """Keep what :func:`_prepared` compiled; rows are shaped at first use.

        :param compiled: the statement compiled for ``dialect``.
        :param order: its parameters' names, in the order ``run`` passes them.
        """
        self.name, self.prepare, self.run = name, prepare, run
        # Sent just before another statement, its parameters get a prefix.
        self.run_before = _PARAMETER.sub(r"%(before_\1)s", run)
        self.compiled_params = compiled.construct_params
        self.order, self.order_before = order, [f"before_{key}" for key in order]
        self.converters = [
            (index, convert)
            for index, convert in enumerate(
                _processor(compiled.binds[key].type, dialect, "bind") for key in order
            )
            if convert is not None
        ]
        statement = compiled.statement
        self.columns = {
            c.name: c.type for c in getattr(statement, "selected_columns", ())
        }
        self.dialect = dialect
        self.shapes = {}

    def parameters(self, params, before=False):
        """``EXECUTE``'s parameters, converted as SQLAlchemy binds them.

        :param before: name them as :attr:`run_before` does.
        """
        order = self.order
        try:
            values = [params[key] for key in order]
        except (KeyError, TypeError):  # one left out, or no parameters at all
            values = None
        if values is None:  # the statement's bound values, or SQLAlchemy's error
            bound = self.compiled_params(params)
            values = [bound[key] for key in order]
        for index, convert in self.converters:
            values[index] = convert(values[index])
        return dict(zip(self.order_before if before else order, values))

    def rows(self, description, rows):
        """The cursor's rows as named tuples, their values converted by type."""
        names = tuple(column[0] for column in description)
        shape = self.shapes.get(names)
        if shape is None:
            row = namedtuple("Row", names, rename=True)
            converters = [
                (
                    _processor(self.columns[name], self.dialect, "result", column[1])
                    if name in self.columns
                    else None
                )
                for name, column in zip(names, description)
            ]
            shape = self.shapes[names] = (row, converters)
        row, converters = shape
        if not any(converters):
            return [row._make(values) for values in rows]
        return [
            row._make(
                convert(value) if convert else value
                for convert, value in zip(converters, values)
            )
            for values in rows
        ]


def _processor(type_, dialect, kind, coltype=None):
    """The bind or result conversion of ``type_`` on ``dialect``, or ``None``."""
    impl = type_.dialect_impl(dialect)
    if kind == "bind":
        return impl.bind_processor(dialect)
    return impl.result_processor(dialect, coltype)


@lru_cache(maxsize=None)
def _prepared(statement, dialect):
    """The :class:`_Plan` of a statement: its name, ``PREPARE`` and ``EXECUTE``.

    The name is a digest of the SQL, so two statements never share one.
    ``EXECUTE`` passes the parameters in the order of their first use,
    typed as in the statement, and reads the same columns.
    """
    compiled = statement.compile(dialect=dialect)
    order = []

    def position(match):
        if match.group(1) not in order:
            order.append(match.group(1))
        return f"${order.index(match.group(1)) + 1}"

    sql = _PARAMETER.sub(position, compiled.string)  # "%%" stays: see execute()
    name = "wtflow_" + hashlib.sha1(sql.encode()).hexdigest()[:16]
    run = f"EXECUTE {name} ({', '.join(f'%({p})s' for p in order)})"
    return _Plan(name, f"PREPARE {name} AS {sql}", run, compiled, order, dialect)
