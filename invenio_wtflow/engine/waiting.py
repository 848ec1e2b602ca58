# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Wait for a run to finish: PostgreSQL ``NOTIFY`` when it can, polling otherwise.

The transaction that stores a run's finished status sends a notification
with the run's id and that status on :data:`CHANNEL`, for any client, and on
the run's own channel (:func:`run_channel`), for its waiters (PostgreSQL
delivers them at the commit, and not at all on a rollback). :func:`wait`
listens on the run's channel on its own connection, then reads the status,
so a run that finishes between the two is not missed; the notification then
ends the wait with the status it carries, and the status is read again at
every ``interval`` in any case. It hears notifications through psycopg 3 or
psycopg2; other databases and drivers are polled every ``interval``.

``LISTEN`` takes effect when its transaction commits, so the first message
commits it before the read begins (``BEGIN; LISTEN; COMMIT; SELECT``): one
round trip, and a finish committed after the read's snapshot is heard.

A finished wait leaves its connection listening on the finished run's
channel, and returns as soon as it hears, without an ``UNLISTEN`` round
trip. The engine's next prepared statement on that connection drops the
channel in its own message (psycopg2: see
:func:`~invenio_wtflow.engine.prepared.execute`), as does the next wait on
it (in a round trip of its own, then forgetting what was
heard: a notification of the finished run, late or after a restart, never
ends a later wait), and a connection the pool replaces forgets it.
Meanwhile little is said on that channel (only a restart's finish), so the
connection receives almost nothing; but PostgreSQL still wakes it at every
notification to read its queue, and code that holds a transaction open on
it meanwhile holds that queue back, as any listening session does.
"""

import select
import time
import uuid

from sqlalchemy import select as sa_select

from ..errors import WaitTimeoutError, WorkflowNotFoundError
from ..models import WorkflowRun, WorkflowStatus

CHANNEL = "wtflow_run_finished"
"""The channel of every run's finish; the payload is ``"<run id> <status>"``."""

RUN_CHANNEL_PREFIX = "wtflow_run_"
"""The start of a run's own channel, followed by its id in hexadecimal."""

_STATUS = "SELECT status FROM wtflow_workflow WHERE id = %s"

_LISTEN_THEN_READ = (
    "BEGIN; LISTEN {channel}; COMMIT; "
    "SELECT status FROM wtflow_workflow WHERE id = '{workflow_id}'"
)
"""The first message of a wait: ``LISTEN`` committed, then the status read.

In one message without the ``COMMIT``, the two would be one implicit
transaction: the read's snapshot would precede the ``LISTEN``'s commit, and
a finish committed in between would be neither seen nor heard. The id is
written in (a :class:`uuid.UUID`): psycopg 3 sends a message of several
statements only without parameters.
"""

LISTENING = "wtflow_listening"
"""Key, in a pooled connection's ``info``, of the channel a finished wait left."""

FINISHED = frozenset(s.value for s in WorkflowStatus if s.is_terminal)

_IDLE = 0
"""libpq's ``PQTRANS_IDLE``, as both drivers' ``info.transaction_status`` give it."""


def notifies(session):
    """Whether the session's database wakes waiters (PostgreSQL).

    The transaction that stores a run's finished status sends the run's id
    and that status on :data:`CHANNEL` and on :func:`run_channel` then, with
    the ``UPDATE`` itself (see
    :func:`~invenio_wtflow.engine.statements.set_run_status`). Other
    databases are polled.
    """
    return session.get_bind().dialect.name == "postgresql"


def run_channel(workflow_id):
    """The channel on which run ``workflow_id``'s finish is sent to its waiters.

    :param workflow_id: the run's id (a :class:`uuid.UUID` or its text).
    """
    return RUN_CHANNEL_PREFIX + uuid.UUID(str(workflow_id)).hex


def run_channel_sql(column):
    """SQL for :func:`run_channel` of the run whose id is in ``column``."""
    return f"'{RUN_CHANNEL_PREFIX}' || replace(CAST({column} AS text), '-', '')"


def wait(engine, workflow_id, timeout=None, interval=1.0):
    """Block until run ``workflow_id`` is finished; return its status.

    Uses connections of its own, so it sees what other transactions commit.
    Returns the status the run finished with since the call began (a run
    restarted meanwhile may be running again).

    :param engine: the SQLAlchemy engine of the database.
    :param workflow_id: the run's id.
    :param timeout: seconds to wait at most (``None``: no limit).
    :param interval: seconds between two reads of the status when nothing
        is heard (on PostgreSQL, a safety net: a notification wakes it).
    :raises WorkflowNotFoundError: when there is no such run.
    :raises WaitTimeoutError: when the run is still unfinished at ``timeout``.
    """
    try:
        workflow_id = uuid.UUID(str(workflow_id))  # the notifications' spelling
    except ValueError:
        raise WorkflowNotFoundError(workflow_id) from None
    deadline = None if timeout is None else time.monotonic() + timeout
    if engine.dialect.name == "postgresql":
        connection = engine.raw_connection()
        try:
            receive = _receiver(connection.driver_connection)
            if receive is not None:
                return _listen(
                    connection.driver_connection,
                    connection.info,
                    receive,
                    workflow_id,
                    deadline,
                    interval,
                )
        finally:
            connection.close()
    return _poll(engine, workflow_id, deadline, interval)


def _receiver(conn):
    """How to hear notifications on the driver's connection ``conn``, if known."""
    if callable(getattr(conn, "notifies", None)):
        return _received_psycopg
    if hasattr(conn, "poll") and isinstance(getattr(conn, "notifies", None), list):
        return _received_psycopg2
    return None


def _received_psycopg(conn, seconds):
    """Payloads psycopg 3 hears within ``seconds`` (it keeps earlier ones too)."""
    return [n.payload for n in conn.notifies(timeout=seconds, stop_after=1)]


def _received_psycopg2(conn, seconds):
    """Payloads psycopg2 hears within ``seconds``, and the ones it had kept."""
    if not conn.notifies and select.select([conn], [], [], seconds) != ([], [], []):
        conn.poll()
    payloads = [n.payload for n in conn.notifies]
    conn.notifies.clear()
    return payloads


def _listen(conn, info, receive, workflow_id, deadline, interval):
    """Wait on ``LISTEN`` until a read or a notification says the run finished.

    A notification heard after ``LISTEN`` ends the wait even when a read
    between the two saw the run unfinished (it finished, then was restarted):
    it finished since the wait began.

    :param info: the pooled connection's ``info``, where a finished wait
        leaves the name of the channel it still listens on.
    """
    channel, stale = run_channel(workflow_id), info.pop(LISTENING, None)
    autocommit = conn.autocommit
    conn.autocommit = True
    cursor = conn.cursor()
    finished = False
    try:
        if stale is not None:
            # Apart from the LISTEN: listening on nothing, the session
            # starts again at the queue's head, past what the channel had.
            cursor.execute(f"UNLISTEN {stale}")
        _forget(conn, receive)
        cursor.execute(
            _LISTEN_THEN_READ.format(channel=channel, workflow_id=workflow_id)
        )
        status = _checked(_last_row(cursor), workflow_id)
        while status not in FINISHED:
            pause = _pause(deadline, interval, workflow_id, status)
            told = _sleep_until_told(conn, receive, str(workflow_id), pause)
            status = told if told in FINISHED else _read(cursor, workflow_id)
        finished = True
        return status
    finally:
        if not conn.closed:  # a broken connection would hide the first error
            if finished:
                info[LISTENING] = channel  # dropped by the next message
            else:
                if conn.info.transaction_status != _IDLE:
                    cursor.execute("ROLLBACK")  # a first message that failed
                listened = dict.fromkeys(c for c in (channel, stale) if c)
                cursor.execute("; ".join(f"UNLISTEN {c}" for c in listened))
            _forget(conn, receive)
            conn.autocommit = autocommit
        cursor.close()


def _forget(conn, receive):
    """Drop the notifications the connection heard and nobody read."""
    while receive(conn, 0):
        pass


def _read(cursor, workflow_id):
    """Read the run's status on the listening connection."""
    cursor.execute(_STATUS, (str(workflow_id),))
    return _checked(cursor.fetchone(), workflow_id)


def _last_row(cursor):
    """The row of a message's last statement (psycopg 3 keeps each statement's result)."""
    while cursor.description is None and cursor.nextset():
        pass
    return cursor.fetchone()


def _sleep_until_told(conn, receive, run_id, seconds):
    """Sleep until the run is notified or ``seconds`` have passed.

    :returns: the status the notification carried (``None`` if it carried
        none, or if nothing was heard for the run).
    """
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        for payload in receive(conn, left):
            notified, _, status = payload.partition(" ")
            if notified == run_id:
                return status or None
    return None


def _poll(engine, workflow_id, deadline, interval):
    """Read the status every ``interval`` seconds, each time in a new transaction."""
    query = sa_select(WorkflowRun.status).where(WorkflowRun.id == workflow_id)
    while True:
        with engine.connect() as connection:
            row = connection.execute(query).first()
        status = _checked(row, workflow_id)
        if status in FINISHED:
            return status
        time.sleep(_pause(deadline, interval, workflow_id, status))


def _checked(row, workflow_id):
    """The status read, or :class:`WorkflowNotFoundError` when there is no run."""
    if row is None:
        raise WorkflowNotFoundError(workflow_id)
    return row[0]


def _pause(deadline, interval, workflow_id, status):
    """Seconds to sleep before the next read; raise when none are left."""
    if deadline is None:
        return interval
    left = deadline - time.monotonic()
    if left <= 0:
        raise WaitTimeoutError(workflow_id, status)
    return min(interval, left)
