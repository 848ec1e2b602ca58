# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Waiting for a run to finish: ``Workflow.wait`` and its notification."""

import threading
import time
from contextlib import contextmanager

import pytest
import sqlalchemy as sa
from invenio_db import db as _db

from invenio_wtflow import Workflow
from invenio_wtflow.engine import orchestrator, waiting
from invenio_wtflow.errors import WaitTimeoutError, WorkflowNotFoundError

from .test_engine_orchestrator import count_statements


def test_a_finished_run_is_returned_at_once(app, db):
    wf = Workflow.create("add-chain", start=True)  # eager: finished already
    start = time.monotonic()
    assert wf.wait(timeout=0) is wf
    assert time.monotonic() - start < 0.5
    assert (wf.status, wf.result) == ("success", 60)


def finish_later(app, broker, delay):
    """Deliver every kept attempt after ``delay`` seconds, in another thread."""

    def deliver():
        time.sleep(delay)
        with app.app_context():
            try:
                broker.deliver_all()
            finally:
                _db.session.remove()

    thread = threading.Thread(target=deliver)
    thread.start()
    return thread


def test_wait_returns_when_another_transaction_finishes_the_run(app, clean, broker):
    wf = Workflow.create("add-chain", start=True)
    assert wf.status == "running"
    thread = finish_later(app, broker, 0.3)
    start = time.monotonic()
    # On PostgreSQL the notification wakes it long before the interval.
    interval = 30 if _db.engine.dialect.name == "postgresql" else 0.05
    try:
        assert wf.wait(timeout=20, interval=interval) is wf
    finally:
        thread.join()
    assert time.monotonic() - start < 10
    assert (wf.status, wf.result) == ("success", 60)


def test_the_status_the_wait_saw_is_read_without_a_statement(app, clean, broker):
    wf = Workflow.create("add-chain", start=True)
    thread = finish_later(app, broker, 0.2)
    interval = 30 if _db.engine.dialect.name == "postgresql" else 0.05
    try:
        wf.wait(timeout=20, interval=interval)
    finally:
        thread.join()
    with count_statements(_db) as statements:
        assert wf.status == "success"
    assert statements == []
    assert wf.result == 60  # the rest of the run is read again


def test_a_listening_wait_sends_nothing_through_the_session(app, clean, broker):
    postgresql_only()
    wf = Workflow.create("add-chain", start=True)
    waiter, sent = threading.get_ident(), []

    def record(conn, cursor, statement, *args):
        if threading.get_ident() == waiter:
            sent.append(statement)

    thread = finish_later(app, broker, 0.3)
    sa.event.listen(_db.engine, "before_cursor_execute", record)
    try:
        wf.wait(timeout=20, interval=30)
    finally:
        sa.event.remove(_db.engine, "before_cursor_execute", record)
        thread.join()
    assert sent == []  # the listening connection reads the status itself
    assert wf.status == "success"


def test_an_already_finished_status_is_read_without_a_statement(app, db):
    wf = Workflow.create("add-chain", start=True)  # eager: finished already
    wf.wait(timeout=0)
    with count_statements(db) as statements:
        assert wf.status == "success"
    assert statements == []


def test_wait_gives_up_at_its_timeout_and_changes_nothing(app, clean, broker):
    wf = Workflow.create("add-chain", start=True)
    start = time.monotonic()
    with pytest.raises(WaitTimeoutError, match="is still running") as info:
        wf.wait(timeout=0.3, interval=0.1)
    assert 0.3 <= time.monotonic() - start < 5
    assert (info.value.workflow_id, info.value.status) == (wf.id, "running")
    assert isinstance(info.value, TimeoutError)
    assert Workflow.get(wf.id).status == "running"
    broker.deliver_all()
    assert wf.wait(timeout=5).status == "success"


@pytest.mark.parametrize("missing", ["00000000-0000-0000-0000-000000000000", "42"])
def test_waiting_for_an_unknown_run_is_an_error(app, clean, missing):
    with pytest.raises(WorkflowNotFoundError, match=missing):
        waiting.wait(_db.engine, missing, timeout=1)


def test_a_run_is_waited_for_under_any_spelling_of_its_id(app, clean, broker):
    wf = Workflow.create("add-chain", start=True)
    thread = finish_later(app, broker, 0.2)
    interval = 30 if _db.engine.dialect.name == "postgresql" else 0.05
    try:
        status = waiting.wait(_db.engine, str(wf.id).upper(), 20, interval)
    finally:
        thread.join()
    assert status == "success"


def postgresql_only():
    """Skip off PostgreSQL: LISTEN/NOTIFY is PostgreSQL's."""
    if _db.engine.dialect.name != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")


@pytest.fixture(params=["psycopg2", "psycopg"])
def driver_engine(app, request):
    """The test database through each PostgreSQL driver."""
    postgresql_only()
    url = _db.engine.url.set(drivername=f"postgresql+{request.param}")
    engine = sa.create_engine(url)
    yield engine
    engine.dispose()


@contextmanager
def listening(engine, channel=waiting.CHANNEL):
    """A driver connection of ``engine`` listening on ``channel``."""
    connection = engine.raw_connection()
    raw = connection.driver_connection
    raw.autocommit = True
    cursor = raw.cursor()
    cursor.execute(f"LISTEN {channel}")
    try:
        yield raw
    finally:
        cursor.execute(f"UNLISTEN {channel}")
        cursor.close()
        raw.autocommit = False
        connection.close()


@pytest.fixture()
def listener(app):
    """A connection of the test database listening on the engine's channel."""
    postgresql_only()
    with listening(_db.engine) as raw:
        yield raw


def heard(raw, seconds=0.5, quiet=0.2):
    """The payloads notified within ``seconds``, and those that follow them.

    Two notifications committed one after the other may reach the client
    in two reads: after the first payloads, it keeps reading until nothing
    more comes for ``quiet`` seconds.
    """
    receive = waiting._receiver(raw)
    payloads = receive(raw, seconds)
    while payloads and (more := receive(raw, quiet)):
        payloads += more
    return payloads


def test_each_postgresql_driver_is_woken_by_the_notification(
    app, clean, broker, driver_engine
):
    wf = Workflow.create("add-chain", start=True)
    thread = finish_later(app, broker, 0.3)
    start = time.monotonic()
    try:
        # A 30 s interval: only the notification can wake it in time.
        assert waiting.wait(driver_engine, wf.id, timeout=20, interval=30) == "success"
    finally:
        thread.join()
    assert time.monotonic() - start < 10


def test_a_finish_committed_during_the_first_read_is_heard(
    app, clean, broker, listener, monkeypatch
):
    """``LISTEN`` takes effect when its transaction commits. Sent with the
    read as one implicit transaction, a finish committed after the read's
    snapshot and before that commit is neither seen nor heard (another
    listener, here ``listener``, reads the queue past it meanwhile), and the
    wait sleeps a whole ``interval``: the first message commits the
    ``LISTEN`` before the read begins."""
    slow = waiting._LISTEN_THEN_READ.replace(
        "FROM wtflow_workflow", "FROM wtflow_workflow, pg_sleep(1)"
    )
    assert slow != waiting._LISTEN_THEN_READ
    monkeypatch.setattr(waiting, "_LISTEN_THEN_READ", slow)
    wf = Workflow.create("add-chain", start=True)
    thread = finish_later(app, broker, 0.3)  # during the read's second
    start = time.monotonic()
    try:
        assert waiting.wait(_db.engine, wf.id, timeout=20, interval=30) == "success"
    finally:
        thread.join()
    assert time.monotonic() - start < 10


def test_a_wait_sends_one_message_before_it_sleeps(app, clean, broker):
    postgresql_only()
    psycopg2 = pytest.importorskip("psycopg2")
    sent = []

    class Recording(psycopg2.extensions.cursor):
        def execute(self, query, vars=None):
            sent.append(query)
            return super().execute(query, vars)

    url = _db.engine.url.set(drivername="postgresql+psycopg2")
    engine = sa.create_engine(url, connect_args={"cursor_factory": Recording})
    wf = Workflow.create("add-chain", start=True)
    thread = finish_later(app, broker, 0.3)
    try:
        assert waiting.wait(engine, wf.id, timeout=20, interval=30) == "success"
    finally:
        thread.join()
        engine.dispose()
    # After the dialect's first queries, one message, and none after hearing.
    assert sent[-1] == waiting._LISTEN_THEN_READ.format(
        channel=waiting.run_channel(wf.id), workflow_id=wf.id
    )


def listened(connection):
    """The channels the session of ``connection`` listens on."""
    return [
        channel
        for (channel,) in connection.exec_driver_sql("SELECT pg_listening_channels()")
    ]


def test_a_finished_wait_leaves_only_its_run_channel_listened(
    app, clean, broker, driver_engine
):
    """No ``UNLISTEN`` after the notification: the connection goes back to
    the pool listening on the finished run's channel, hears nothing of other
    runs there, and the next wait on it drops that channel."""
    first = Workflow.create("add-chain", start=True)
    broker.deliver_all()
    assert waiting.wait(driver_engine, first.id, timeout=20) == "success"
    assert driver_engine.pool.checkedout() == 0
    second = Workflow.create("add-chain", start=True)
    broker.deliver_all()  # the second run finishes, notified
    with driver_engine.connect() as connection:
        assert listened(connection) == [waiting.run_channel(first.id)]
        raw = connection.connection.driver_connection
        assert raw.autocommit is False
        assert heard(raw, seconds=0.3) == []  # none of the second run's
    assert waiting.wait(driver_engine, second.id, timeout=20) == "success"
    with driver_engine.connect() as connection:
        assert listened(connection) == [waiting.run_channel(second.id)]


def test_an_earlier_finish_of_the_run_never_ends_a_later_wait(
    app, clean, broker, driver_engine
):
    """The connection still listens on the run's channel after a first wait;
    a notification of that finish arriving late (or of a finish before a
    restart) is dropped before the next wait on the connection listens."""
    wf = Workflow.create("add-chain", start=True)
    broker.deliver_all()
    assert waiting.wait(driver_engine, wf.id, timeout=20) == "success"
    late = notify_later(app, waiting.run_channel(wf.id), f"{wf.id} success", 0)
    late.join()
    wf.restart()  # running again; its attempts stay with the broker
    with pytest.raises(WaitTimeoutError, match="is still running"):
        waiting.wait(driver_engine, wf.id, timeout=1, interval=30)
    broker.deliver_all()
    assert waiting.wait(driver_engine, wf.id, timeout=20) == "success"


def test_a_wait_that_gives_up_leaves_nothing_listened(
    app, clean, broker, driver_engine
):
    finished = Workflow.create("add-chain", start=True)
    broker.deliver_all()
    assert waiting.wait(driver_engine, finished.id, timeout=20) == "success"
    running = Workflow.create("add-chain", start=True)  # never delivered
    with pytest.raises(WaitTimeoutError):
        waiting.wait(driver_engine, running.id, timeout=0.2)
    with driver_engine.connect() as connection:
        assert listened(connection) == []


def test_a_first_message_that_fails_leaves_the_connection_usable(
    app, clean, broker, driver_engine, monkeypatch
):
    """A first message that fails inside its ``BEGIN`` leaves the transaction
    open and aborted: it is rolled back, and the same connection (not a new
    one) serves the next wait."""
    wf, other = (Workflow.create("add-chain", start=True) for _ in range(2))
    broker.deliver_all()
    assert waiting.wait(driver_engine, other.id, timeout=20) == "success"
    with driver_engine.connect() as connection:
        backend = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    failing = waiting._LISTEN_THEN_READ.replace("COMMIT;", "SELECT 1 / 0; COMMIT;")
    monkeypatch.setattr(waiting, "_LISTEN_THEN_READ", failing)
    with pytest.raises(driver_engine.dialect.dbapi.Error, match="division by zero"):
        waiting.wait(driver_engine, wf.id, timeout=20)
    assert driver_engine.pool.checkedout() == 0
    with driver_engine.connect() as connection:  # the earlier wait's channel too
        assert listened(connection) == []
    monkeypatch.undo()
    assert waiting.wait(driver_engine, wf.id, timeout=20) == "success"
    with driver_engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT pg_backend_pid()").scalar() == backend
        assert listened(connection) == [waiting.run_channel(wf.id)]


def test_a_notification_heard_during_a_read_is_not_waited_for(app, driver_engine):
    with listening(driver_engine) as raw:
        with raw.cursor() as cursor:
            # The session hears its own notification with the command's answer,
            # as it would hear a run's finish with the answer to a status read.
            cursor.execute(f"NOTIFY {waiting.CHANNEL}, 'run'")
        start = time.monotonic()
        assert heard(raw, seconds=30) == ["run"]
        assert time.monotonic() - start < 5
        assert heard(raw, seconds=0.1) == []


def test_the_transaction_that_finishes_a_run_notifies_it(app, clean, broker, listener):
    wf = Workflow.create("add-chain", start=True)
    with listening(_db.engine, waiting.run_channel(wf.id)) as own:
        broker.deliver(lambda m: m is broker.messages[0])  # the run goes on
        assert heard(listener) == [] and heard(own, 0.1) == []
        broker.deliver_all()
        assert heard(listener) == [f"{wf.id} success"]
        assert heard(own) == [f"{wf.id} success"]


def test_a_stopped_run_is_notified_on_both_channels(app, clean, broker, listener):
    wf, other = (Workflow.create("add-chain", start=True) for _ in range(2))
    with listening(_db.engine, waiting.run_channel(wf.id)) as own:
        wf.stop()
        other.stop()
        assert heard(own) == [f"{wf.id} cancelled"]
    assert heard(listener) == [f"{wf.id} cancelled", f"{other.id} cancelled"]


def test_a_run_channel_is_the_run_id_in_hexadecimal(app, db):
    wf = Workflow.create("add-chain")
    assert waiting.run_channel(str(wf.id)) == f"wtflow_run_{wf.id.hex}"
    if db.engine.dialect.name == "postgresql":
        sql = f"SELECT {waiting.run_channel_sql('id')} FROM wtflow_workflow"
        assert db.session.execute(sa.text(sql)).scalar() == waiting.run_channel(wf.id)


def notify_later(app, channel, payload, delay=0.3):
    """Send ``payload`` on ``channel`` after ``delay`` seconds, in another thread."""

    def send():
        time.sleep(delay)
        with app.app_context(), _db.engine.connect() as connection:
            connection.execute(
                sa.text("SELECT pg_notify(:channel, :payload)"),
                {"channel": channel, "payload": payload},
            )
            connection.commit()

    thread = threading.Thread(target=send)
    thread.start()
    return thread


def test_the_notified_status_ends_the_wait_without_reading_it_again(
    app, clean, broker, driver_engine
):
    wf = Workflow.create("add-chain", start=True)  # it stays running
    thread = notify_later(app, waiting.run_channel(wf.id), f"{wf.id} success")
    try:
        status = waiting.wait(driver_engine, wf.id, timeout=20, interval=30)
    finally:
        thread.join()
    assert status == "success"  # what the finishing transaction said


@pytest.mark.parametrize("payload", ["{id}", "{id} running", "{other} success"])
def test_other_notifications_are_read_again_or_ignored(
    app, clean, broker, driver_engine, payload
):
    wf = Workflow.create("add-chain", start=True)  # it stays running
    other = "00000000-0000-0000-0000-000000000000"
    payload = payload.format(id=wf.id, other=other)
    thread = notify_later(app, waiting.run_channel(wf.id), payload, 0.1)
    try:
        with pytest.raises(WaitTimeoutError, match="is still running"):
            waiting.wait(driver_engine, wf.id, timeout=1, interval=30)
    finally:
        thread.join()


def test_a_rolled_back_finish_notifies_nothing(app, clean, broker, listener):
    wf = Workflow.create("add-chain", start=True)

    def stop_then_fail(uow):
        orchestrator.stop(uow, wf.id)
        raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        orchestrator.atomic(stop_then_fail)
    assert heard(listener) == []
    assert Workflow.get(wf.id).status == "running"


@pytest.mark.parametrize(
    "arguments, error",
    [
        ({"interval": 0}, "interval must be a positive number"),
        ({"interval": -1}, "interval must be a positive number"),
        ({"timeout": -0.5}, "timeout must be None or a number"),
    ],
)
def test_bad_wait_arguments_are_refused(app, db, arguments, error):
    wf = Workflow.create("add-chain")  # pending: it would be waited for
    with pytest.raises(ValueError, match=error):
        wf.wait(**arguments)
    assert Workflow.get(wf.id).status == "pending"
