# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Fault injection with real prefork workers on PostgreSQL and Redis.

Run it alone with ``pytest -m faults``. Selected when
``SQLALCHEMY_DATABASE_URI`` points to PostgreSQL and ``WTFLOW_TEST_BROKER_URL``
to a Redis broker. The shared broker is used on database 8 (or at
``WTFLOW_TEST_FAULTS_BROKER_URL``), where the chaos test's tasks have their
own queue, consumed by its own worker of eight processes. The broker outage
test starts (and stops) its own ``redis-server`` on port 6391 (or
``WTFLOW_TEST_PRIVATE_REDIS_PORT``) and never touches the shared one. Set both
to run two suites side by side. The crash test crashes the PostgreSQL server
itself, every database on it, and the synchronous standby test configures
one for the whole server for a moment: they run only with
``WTFLOW_TEST_CRASH_POSTGRESQL=1``, as root, on a server of your own.
"""

import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import sqlalchemy as sa
from celery import chain
from celery import current_app as current_celery_app
from celery import group
from flask_security.utils import hash_password
from invenio_access.models import ActionUsers
from invenio_db import db as _db
from sqlalchemy import select

from invenio_wtflow import Workflow, current_wtflow
from invenio_wtflow.api import Task
from invenio_wtflow.engine import dispatch
from invenio_wtflow.engine.check import check_workflow
from invenio_wtflow.errors import InvalidStateError
from invenio_wtflow.models import TaskRun, Uptime
from invenio_wtflow.permissions import wtflow_admin_action

from .example_tasks import (
    CHAOS_QUEUE,
    CLAIMS_QUEUE,
    chaos_record,
    gated_record,
    record,
    slow_record,
)
from .processes import start_worker, stop
from .test_engine_prepared import flushed_setting


def _db8(url):
    """The same Redis server, database 8 (kept apart from other runs)."""
    if not url:
        return url
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/8"))


BROKER_URL = os.environ.get("WTFLOW_TEST_FAULTS_BROKER_URL") or _db8(
    os.environ.get("WTFLOW_TEST_BROKER_URL")
)
DB_URI = os.environ.get("SQLALCHEMY_DATABASE_URI", "")
PRIVATE_PORT = int(os.environ.get("WTFLOW_TEST_PRIVATE_REDIS_PORT", "6391"))
PRIVATE_BROKER_URL = f"redis://127.0.0.1:{PRIVATE_PORT}/0"

pytestmark = [
    pytest.mark.faults,
    pytest.mark.integration,
    pytest.mark.skipif(
        not (BROKER_URL and DB_URI.startswith("postgresql")),
        reason="needs SQLALCHEMY_DATABASE_URI (PostgreSQL) and WTFLOW_TEST_BROKER_URL",
    ),
]

CONCURRENCY = 4
CHAOS_CONCURRENCY = 8
TERMINAL = {"success", "failure", "cancelled"}
IGNORED = "is not current; ignoring this delivery"
PASSWORD = "a-long-test-password"
THREADS = 20


#
# Fixtures
#
@pytest.fixture(scope="module")
def broker_uri():
    """Database 8 of the shared Redis (the module's own, purged freely)."""
    return BROKER_URL


@pytest.fixture(scope="module")
def celery_config_ext(celery_config_ext):
    """Publish for real instead of running tasks eagerly."""
    celery_config_ext["CELERY_TASK_ALWAYS_EAGER"] = False
    celery_config_ext["CELERY_RESULT_BACKEND"] = None
    return celery_config_ext


def _start_worker(broker_url, node, log, concurrency=CONCURRENCY, queues=None, **env):
    """Start a worker of this module (see :func:`.processes.start_worker`)."""
    proc = start_worker(
        DB_URI, broker_url, f"{node}-{os.getpid()}", log, concurrency, queues, **env
    )
    return Worker(proc, log)


@dataclass
class Worker:
    """A worker process this module started, and its log file."""

    proc: subprocess.Popen
    log: Path

    def count(self, text):
        """How many times ``text`` appears in the log."""
        return self.log.read_text().count(text)

    def wait_for(self, text, count=1, timeout=60):
        """Wait until ``text`` appears ``count`` times in the log."""
        deadline = time.monotonic() + timeout
        while self.count(text) < count:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text()[-3000:]
                pytest.fail(f"no {text!r} x{count} in the worker log:\n{tail}")
            time.sleep(0.1)


@pytest.fixture(scope="module")
def worker(app, tmp_path_factory):
    """A prefork worker on database 8 of the shared Redis; yields its log."""
    celery = app.extensions["flask-celeryext"].celery
    assert celery.conf.broker_url == BROKER_URL
    celery.control.purge()
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    worker = _start_worker(BROKER_URL, "wtflow-faults", log)
    deadline = time.monotonic() + 60
    while not celery.control.ping(timeout=0.5):
        if worker.proc.poll() is not None or time.monotonic() > deadline:
            stop(worker.proc)
            pytest.fail(f"worker did not start:\n{log.read_text()[-3000:]}")
    yield worker
    stop(worker.proc)


@pytest.fixture(scope="module")
def chaos_worker(app, tmp_path_factory):
    """A worker of eight processes consuming only the chaos queue (database 8)."""
    celery = app.extensions["flask-celeryext"].celery
    assert celery.conf.broker_url == BROKER_URL
    with celery.connection_for_write() as conn:
        conn.default_channel.queue_purge(CHAOS_QUEUE)
    log = tmp_path_factory.mktemp("chaos") / "worker.log"
    worker = _start_worker(
        BROKER_URL,
        "wtflow-faults-chaos",
        log,
        concurrency=CHAOS_CONCURRENCY,
        queues=CHAOS_QUEUE,
    )
    try:
        worker.wait_for(" ready.")
        yield worker
    finally:
        stop(worker.proc)


@pytest.fixture()
def marker_dir(tmp_path):
    """Where the bodies leave one mark per execution."""
    return tmp_path


def wait(workflow_ids, timeout=90, until=TERMINAL):
    """Poll until every run's status is in ``until``; check and return the runs."""
    deadline = time.monotonic() + timeout
    while True:
        _db.session.rollback()
        _db.session.expire_all()
        runs = [Workflow.get(i) for i in workflow_ids]
        if all(r.status in until for r in runs):
            for run in runs:  # every test of this suite ends consistent
                assert check_workflow(run.id) == [], run.name
            return runs
        if time.monotonic() > deadline:
            pytest.fail(f"timeout: {[(r.name, r.status) for r in runs]}")
        time.sleep(0.2)


def statuses(history):
    """The statuses of a task's recorded versions, oldest first."""
    return [h["status"] for h in history]


def transitions(history):
    """The status changes of a task, oldest first (a version may change less)."""
    seen = statuses(history)
    return [b for a, b in zip([None] + seen, seen) if a != b]


def assert_no_repeated_transition(history):
    """No two consecutive versions record the same state (a doubled write)."""
    fields = ("status", "message", "progress", "attempt", "retries", "error")
    states = [tuple(h[f] for f in fields) for h in history]
    assert all(a != b for a, b in zip(states, states[1:])), states


def marks(marker_dir, *names):
    """What each named body left in its marker file."""
    return [(marker_dir / name).read_text() for name in names]


def wait_for_file(path, timeout=30):
    """Wait until a body has written its marker file."""
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text()):
        assert time.monotonic() < deadline, f"{path.name} never written"
        time.sleep(0.05)


#
# 1. Broker unavailable while dispatching
#
def _port_open(port):
    """Whether something accepts connections on ``127.0.0.1:port``."""
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class PrivateRedis:
    """A ``redis-server`` this test owns, on its own port, without persistence."""

    def __init__(self, port, log):
        """Remember where to listen and log; start nothing yet."""
        self.port, self.log, self.proc = port, log, None

    def start(self):
        """Start the server and wait until it accepts connections."""
        out = open(self.log, "a")
        self.proc = subprocess.Popen(
            [
                shutil.which("redis-server"),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()
        deadline = time.monotonic() + 10
        while not _port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server did not start:\n{self.log.read_text()}")
            time.sleep(0.05)

    def stop(self):
        """Stop the server (SIGTERM; nothing is saved) and wait until it is gone."""
        stop(self.proc, timeout=10)
        deadline = time.monotonic() + 10
        while _port_open(self.port):
            assert time.monotonic() < deadline, "redis-server still listening"
            time.sleep(0.05)


@pytest.fixture()
def private_broker(tmp_path_factory):
    """A private Redis on port 6391 and a worker consuming from it."""
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server")
    if _port_open(PRIVATE_PORT):
        pytest.fail(f"port {PRIVATE_PORT} is taken; the private broker needs it")
    logs = tmp_path_factory.mktemp("private")
    redis = PrivateRedis(PRIVATE_PORT, logs / "redis.log")
    redis.start()
    log = logs / "worker.log"
    worker = _start_worker(PRIVATE_BROKER_URL, "wtflow-faults-private", log)
    try:
        worker.wait_for(" ready.")
        yield redis, worker
    finally:
        stop(worker.proc)
        redis.stop()


@contextmanager
def publishing_to(url):
    """Make this process publish to another broker, then restore its own.

    Celery caches the producer pool of its write connection; both are reset.
    """
    celery = current_celery_app._get_current_object()

    def reset():
        celery._pool = None
        celery.amqp._producer_pool = None

    celery.conf["broker_write_url"] = url
    reset()
    try:
        assert celery.conf.broker_write_url == url
        yield celery
    finally:
        celery.conf["broker_write_url"] = None
        reset()


def test_broker_down_while_dispatching(app, clean, private_broker, marker_dir, caplog):
    """Redis is stopped when a task is published; the sweeper sends it later."""
    redis, worker = private_broker
    current_wtflow.register(
        "faults-chain",
        chain(record.si(name="a"), record.si(name="b"), record.s(name="c")),
    )
    wf = Workflow.create("faults-chain", data={"marker_dir": str(marker_dir)})
    with publishing_to(PRIVATE_BROKER_URL):
        redis.stop()
        with caplog.at_level(logging.ERROR, logger=dispatch.logger.name):
            wf.start()
        assert "Could not publish attempt" in caplog.text
        _db.session.rollback()
        wf = Workflow.get(wf.id)
        assert [t.status for t in wf.tasks] == ["queued", "pending", "pending"]
        assert wf.status == "running"
        assert check_workflow(wf.id) == []
        # Five ready tasks cost the caller one broker timeout, not five.
        began = time.monotonic()
        fan = Workflow.create("fan-out").start()
        assert time.monotonic() - began < 15
        assert [t.status for t in fan.tasks] == ["queued"] * 5 + ["pending"]

        redis.start()
        # The worker reconnects (and declares its queue again on the empty
        # server), then the sweeper publishes the attempts left queued.
        worker.wait_for("Connected to redis://", count=2)
        assert dispatch.requeue_stale(older_than=0) == 6
        wf, fan = wait([wf.id, fan.id])
        assert fan.status == "success" and fan.result == 20
    assert wf.status == "success", [(t.status, t.error) for t in wf.tasks]
    assert [t.status for t in wf.tasks] == ["success"] * 3
    assert [t.attempt for t in wf.tasks] == [1, 1, 1]
    assert wf.result == "c"
    assert marks(marker_dir, "a", "b", "c") == ["x", "x", "x"]
    for task in wf.tasks:
        assert statuses(task.history()) == ["pending", "queued", "running", "success"]
    assert dispatch.requeue_stale(older_than=0) == 0


#
# 2. The same message delivered twice
#
def test_duplicate_delivery_runs_the_body_once(app, worker, clean, marker_dir):
    """Two more copies of a running attempt's message reach the worker."""
    current_wtflow.register(
        "faults-slow",
        chain(slow_record.si(name="slow", seconds=3), record.s(name="after")),
    )
    wf = Workflow.create("faults-slow", data={"marker_dir": str(marker_dir)})
    wf.start()
    wait_for_file(marker_dir / "slow")  # the first delivery runs the body
    _db.session.rollback()
    first = Workflow.get(wf.id).tasks[0]
    assert first.status == "running"
    message = dispatch.Message.for_task(first.model)
    before = worker.count(IGNORED)
    dispatch.publish([message, message])
    # Both copies are delivered and turned away while the body still runs.
    worker.wait_for(IGNORED, count=before + 2, timeout=30)
    assert worker.count(f"Attempt {message.celery_id} of") == 2
    _db.session.rollback()
    assert Workflow.get(wf.id).tasks[0].status == "running"
    (wf,) = wait([wf.id])
    assert wf.status == "success" and wf.result == "after"
    assert [t.status for t in wf.tasks] == ["success", "success"]
    assert [t.attempt for t in wf.tasks] == [1, 1]
    assert wf.tasks[0].model.celery_id == message.celery_id
    assert marks(marker_dir, "slow", "after") == ["x", "x"]
    for task in wf.tasks:
        history = task.history()
        assert statuses(history) == ["pending", "queued", "running", "success"]
        assert_no_repeated_transition(history)

    # A copy arriving after the attempt finished changes nothing either.
    dispatch.publish([message])
    worker.wait_for(IGNORED, count=before + 3, timeout=30)
    (wf,) = wait([wf.id])
    assert marks(marker_dir, "slow", "after") == ["x", "x"]
    assert statuses(wf.tasks[0].history()) == [
        "pending",
        "queued",
        "running",
        "success",
    ]


#
# 3. An old attempt's message after a restart
#
def test_old_attempt_after_restart_is_ignored(app, worker, clean, marker_dir):
    """The first attempt's message, delivered again after a restart, is dropped."""
    current_wtflow.register(
        "faults-pair",
        chain(slow_record.si(name="first", seconds=1), record.s(name="second")),
    )
    wf = Workflow.create("faults-pair", data={"marker_dir": str(marker_dir)})
    (wf,) = wait([wf.start().id])
    assert wf.status == "success"
    old = dispatch.Message.for_task(wf.tasks[0].model)
    before = worker.count(IGNORED)

    wf.restart()
    wait_for_file(marker_dir / "first")
    # The old attempt arrives while the new one runs, and once more after.
    dispatch.publish([old])
    (wf,) = wait([wf.id])
    dispatch.publish([old])
    worker.wait_for(IGNORED, count=before + 2, timeout=30)
    assert worker.count(f"Attempt {old.celery_id} of") == 2

    _db.session.rollback()
    (wf,) = wait([wf.id])
    assert wf.status == "success" and wf.result == "second"
    assert [t.status for t in wf.tasks] == ["success", "success"]
    assert [t.attempt for t in wf.tasks] == [2, 2]
    assert wf.tasks[0].model.celery_id != old.celery_id
    assert marks(marker_dir, "first", "second") == ["xx", "xx"]
    for task in wf.tasks:
        history = task.history()
        assert_no_repeated_transition(history)
        assert statuses(history).count("running") == 2
        assert statuses(history).count("success") == 2
        assert statuses(history)[-3:] == ["queued", "running", "success"]


#
# 4. The database connection dropped while a worker records a result
#
@contextmanager
def database_outage(seconds):
    """Drop every other connection to the test database; refuse new ones a while.

    Uses a connection of its own (autocommit): ``ALTER DATABASE`` and
    ``pg_terminate_backend`` are what an operator's failover or a restarted
    server does to the workers' connections.
    """
    url = _db.engine.url
    name = url.database
    admin = _db.engine.url.set(database="postgres")
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
        try:
            killed = conn.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            ).scalar_one()
            yield killed
            time.sleep(seconds)
        finally:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
    engine.dispose()
    _db.engine.dispose()  # this process's connections were dropped too


def test_a_dropped_database_connection_is_retried_and_recorded_once(
    app, worker, clean, marker_dir
):
    """The worker's connections die, and new ones are refused for 0.5 s, as the
    body returns: the worker retries the write and records the result once."""
    current_wtflow.register(
        "faults-db-drop",
        chain(gated_record.si(name="gated"), record.s(name="after")),
    )
    wf = Workflow.create("faults-db-drop", data={"marker_dir": str(marker_dir)})
    wf.start()
    wait_for_file(marker_dir / "gated")
    _db.session.rollback()
    before = worker.count("Retrying transaction after transient error")
    with database_outage(0.5) as killed:
        assert killed >= 1  # at least the worker's pooled connection
        (marker_dir / "gated.go").write_text("")
    (wf,) = wait([wf.id])
    assert worker.count("Retrying transaction after transient error") > before
    assert wf.status == "success" and wf.result == "after"
    assert [t.attempt for t in wf.tasks] == [1, 1]
    assert marks(marker_dir, "gated", "after") == ["x", "x"]  # each body ran once
    for task in wf.tasks:
        history = task.history()
        assert statuses(history) == ["pending", "queued", "running", "success"]
        assert_no_repeated_transition(history)


#
# 4b. PostgreSQL crashes while a body runs, its claim not flushed yet
#
CRASH = os.environ.get("WTFLOW_TEST_CRASH_POSTGRESQL")


def _admin_connection():
    """A connection of its own (autocommit) to the test database's server."""
    engine = sa.create_engine(
        _db.engine.url.set(database="postgres"), isolation_level="AUTOCOMMIT"
    )
    return engine, engine.connect()


def _make_tables_logged():
    """Make the test database's tables logged again, but the uptime row's.

    pytest-invenio creates them ``UNLOGGED`` (faster), which a crash
    empties. A table can be made logged only once the tables it references
    are, and runs and tasks reference each other: their foreign keys are
    dropped meanwhile, and added again.
    """
    _db.session.rollback()  # its locks would hold the changes back
    engine = sa.create_engine(_db.engine.url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text("SET lock_timeout = '10s'"))
        tables = conn.execute(
            sa.text(
                "SELECT oid::regclass::text FROM pg_class WHERE relkind = 'r' "
                "AND relpersistence = 'u' AND relname <> 'wtflow_uptime'"
            )
        ).scalars()
        tables = list(tables)
        keys = conn.execute(
            sa.text(
                "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
                "FROM pg_constraint WHERE contype = 'f' "
                "AND conrelid::regclass::text = ANY(:tables)"
            ),
            {"tables": tables},
        ).all()
        for table, name, _ in keys:
            conn.execute(sa.text(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"'))
        for table in tables:
            conn.execute(sa.text(f"ALTER TABLE {table} SET LOGGED"))
        for table, name, definition in keys:
            conn.execute(
                sa.text(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
            )
    engine.dispose()


def _wal_writer_pid():
    """The process id of the server's WAL writer."""
    engine, conn = _admin_connection()
    try:
        return conn.execute(
            sa.text("SELECT pid FROM pg_stat_activity WHERE backend_type = 'walwriter'")
        ).scalar_one()
    finally:
        conn.close()
        engine.dispose()


def _wait_for_postgresql(timeout=60):
    """Wait until the server accepts connections again after its crash."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            engine, conn = _admin_connection()
            conn.execute(sa.text("SELECT 1"))
            conn.close()
            engine.dispose()
            return
        except sa.exc.OperationalError:
            assert time.monotonic() < deadline, "PostgreSQL did not come back"
            time.sleep(0.2)


@pytest.fixture()
def unflushed_worker(app, tmp_path, monkeypatch):
    """A worker whose claims commit unflushed, on a queue of its own."""
    monkeypatch.setitem(app.config, "WTFLOW_CLAIM_SYNCHRONOUS_COMMIT", False)
    worker = _start_worker(
        BROKER_URL,
        "wtflow-faults-unflushed",
        tmp_path / "unflushed-worker.log",
        queues=CLAIMS_QUEUE,
        WTFLOW_TEST_WORKER_CLAIM_SYNCHRONOUS_COMMIT="0",
    )
    try:
        worker.wait_for(" ready.")
        yield worker
    finally:
        stop(worker.proc)


@pytest.mark.skipif(
    not CRASH,
    reason="crashes the PostgreSQL server (kills its WAL writer, as root): "
    "set WTFLOW_TEST_CRASH_POSTGRESQL=1 on a server of your own",
)
def test_a_claim_lost_in_a_crash_of_postgresql_is_claimed_again(
    app, unflushed_worker, clean, marker_dir
):
    """With the WAL writer stopped, nothing flushes an unflushed claim; the
    WAL writer is then killed while the body runs, and PostgreSQL recovers
    from the crash without the claim: the task is ``queued`` again. The
    sweeper holds it back (its uptime row is gone), and the body's outcome
    claims the attempt again and is recorded: the body ran once."""
    on_queue = {"queue": CLAIMS_QUEUE}
    current_wtflow.register(
        "faults-crash",
        chain(
            record.si(name="first").set(**on_queue),
            gated_record.si(name="gated").set(**on_queue),
            record.s(name="after").set(**on_queue),
        ),
    )
    _make_tables_logged()
    dispatch.requeue_stale()  # the uptime row, written before the crash
    walwriter = _wal_writer_pid()
    os.kill(walwriter, signal.SIGSTOP)
    try:
        wf = Workflow.create("faults-crash", data={"marker_dir": str(marker_dir)})
        wf.start()
        wf_id, gated_id = wf.id, wf.tasks[1].id
        wait_for_file(marker_dir / "gated")  # claimed unflushed, body running
    finally:
        os.kill(walwriter, signal.SIGKILL)  # crash: every backend goes
    _wait_for_postgresql()
    _db.session().invalidate()  # its connection died with the server's backends
    _db.session.remove()
    _db.engine.dispose()
    assert Task.get(gated_id).status == "queued"  # the claim is lost
    assert _db.session.execute(select(Uptime)).all() == []
    assert dispatch.requeue_stale(older_than=0) == 0  # held back
    assert _db.session.execute(select(Uptime)).all() != []
    (marker_dir / "gated.go").write_text("")
    (wf,) = wait([wf_id])
    assert wf.status == "success" and wf.result == "after"
    assert [t.attempt for t in wf.tasks] == [1, 1, 1]
    assert marks(marker_dir, "first", "gated", "after") == ["x", "x", "x"]
    assert unflushed_worker.count("its claim was lost") == 1
    assert statuses(Task.get(gated_id).history())[-2:] == ["running", "success"]


def _server_setting(admin, conn, name, value):
    """Set ``name`` for the whole server; return once ``conn`` sees it."""
    if value is None:
        admin.execute(sa.text(f"ALTER SYSTEM RESET {name}"))
    else:
        admin.execute(sa.text(f"ALTER SYSTEM SET {name} = '{value}'"))
    admin.execute(sa.text("SELECT pg_reload_conf()"))
    deadline = time.monotonic() + 10
    while conn.exec_driver_sql(f"SHOW {name}").scalar() != (value or ""):
        assert time.monotonic() < deadline, f"{name} not reloaded"
        time.sleep(0.05)


@pytest.mark.skipif(
    not CRASH,
    reason="configures a synchronous standby for the whole server: "
    "set WTFLOW_TEST_CRASH_POSTGRESQL=1 on a server of your own",
)
def test_a_claim_waits_where_a_synchronous_standby_is_configured(app):
    """A caught-up server is not enough where a failover to a synchronous
    standby could lose what it flushed: the guard of an unflushed claim
    leaves ``synchronous_commit`` as it was (``local`` here, so that nothing
    waits for the standby, which does not exist)."""
    engine = sa.create_engine(_db.engine.url, isolation_level="AUTOCOMMIT")
    admin_engine, admin = _admin_connection()
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SET synchronous_commit = local")
            assert flushed_setting(conn) == "off"
            _server_setting(admin, conn, "synchronous_standby_names", "absent")
            try:
                assert flushed_setting(conn) == "local"
            finally:
                _server_setting(admin, conn, "synchronous_standby_names", None)
            assert flushed_setting(conn) == "off"
    finally:
        admin.close()
        admin_engine.dispose()
        engine.dispose()


#
# 5. Twenty workflows started at once through the REST API
#
def _admin(app):
    """Create (and commit) a user allowed to do everything with workflows."""
    datastore = app.extensions["security"].datastore
    user = datastore.create_user(
        email="faults-admin@example.org",
        password=hash_password(PASSWORD),
        active=True,
        confirmed_at=datetime.now(timezone.utc),
    )
    _db.session.commit()
    _db.session.add(ActionUsers.allow(wtflow_admin_action, user=user))
    _db.session.commit()
    return user.email


def test_twenty_rest_clients_at_once(app, worker, clean):
    """Twenty threads, each with its own client, create and start a run."""
    email = _admin(app)
    barrier = threading.Barrier(THREADS)
    created, errors = [], []

    def client_thread(index):
        try:
            # Each request pushes (and tears down) its own application
            # context, so no thread keeps a database connection between them.
            with app.test_client() as client:
                res = client.post("/login", json={"email": email, "password": PASSWORD})
                assert res.status_code == 200, res.get_data(as_text=True)
                barrier.wait(timeout=60)
                res = client.post(
                    "/workflows/",
                    json={"name": "video", "data": {"video_id": index}, "start": True},
                )
                assert res.status_code == 201, res.get_data(as_text=True)
                assert res.json["status"] != "pending"
                created.append((res.json["id"], index))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
            barrier.abort()

    threads = [
        threading.Thread(target=client_thread, args=(i,)) for i in range(THREADS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert len({id_ for id_, _ in created}) == THREADS

    runs = wait([id_ for id_, _ in created])
    for run, (_, index) in zip(runs, created):
        assert run.status == "success", [(t.status, t.error) for t in run.tasks]
        assert run.result == f"published {index}"
        assert [t.status for t in run.tasks] == ["success"] * 4
        assert [t.attempt for t in run.tasks] == [1] * 4
        edges = run.dependencies()
        for task in run.tasks:
            history = task.history()
            assert_no_repeated_transition(history)
            # Created and started in one transaction: a first task is never
            # seen pending.
            first = ["pending", "queued"] if task.id in edges else ["queued"]
            assert transitions(history) == first + ["running", "success"]


#
# 8. A second client stops and restarts tasks at random
#
CHAOS_FULL = os.environ.get("WTFLOW_CHAOS_FULL") == "1"
"""Run the issue's size: 2,013 tasks, up to 100 actions per seed (slow)."""
CHAOS_BRANCHES = 4
"""Independent branches, joined at the end by one task."""
CHAOS_WIDTHS = (99, 180, 96) if CHAOS_FULL else (30, 60, 30)
"""Members of each stage of a branch: a group, then one task joining it.

Every third member is a chain of two tasks: 653 tasks by default, 2,013 with
``WTFLOW_CHAOS_FULL=1``. A stop or restart writes a version of every task it
changes, holding the root lock meanwhile: the default size keeps three seeds
near three minutes on two CPUs.
"""
CHAOS_ACTIONS = 100 if CHAOS_FULL else 60
"""Stop/restart actions per seed, one every 50 to 200 ms after the previous,"""
CHAOS_SECONDS = 300 if CHAOS_FULL else 35
"""or as many as are done in this many seconds."""
CHAOS_SEEDS = (1, 2, 3)
SNAPSHOT_EVERY = 5
"""Check a consistent snapshot of the rows after this many actions."""
STOPPABLE = ("queued", "running")
RESTARTABLE = ("queued", "running", "success", "cancelled")
SETTLES_TO = {
    "pending": ("success", 1),
    "queued": ("success", 0),
    "running": ("success", 0),
    "success": ("success", 0),
    "cancelled": ("cancelled", 0),
}
"""Where a task left alone ends, and after how many more attempts.

No worker dies in this test, so no lease expires and no attempt is added by
the sweeper.
"""


def chaos_definition():
    """Branches of stages (a group, some members chains, then a join), joined."""
    branches = []
    for b in range(CHAOS_BRANCHES):
        stages = []
        for k, width in enumerate(CHAOS_WIDTHS):
            members = [
                (
                    chain(
                        chaos_record.s(name=f"b{b}-s{k}-m{i}-a"),
                        chaos_record.s(name=f"b{b}-s{k}-m{i}-b"),
                    )
                    if i % 3 == 2
                    else chaos_record.s(name=f"b{b}-s{k}-m{i}")
                )
                for i in range(width)
            ]
            stages += [group(members), chaos_record.s(name=f"b{b}-join-{k}")]
        branches.append(chain(*stages))
    return chain(group(branches), chaos_record.s(name="join"))


def snapshot(workflow_id):
    """Check the rows as one snapshot, taken while workers write; return them.

    :returns: the checker's problems, and each task's status and attempt.
    """
    _db.session.rollback()
    _db.session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    try:
        rows = _db.session.execute(
            select(TaskRun.id, TaskRun.status, TaskRun.attempt).where(
                TaskRun.workflow_id == workflow_id
            )
        ).all()
        return check_workflow(workflow_id), {i: (s, a) for i, s, a in rows}
    finally:
        _db.session.rollback()


def executions(marker_dir, name):
    """The Celery ids of the attempts whose body ran, one per execution."""
    path = marker_dir / name
    return path.read_text().split() if path.exists() else []


def pick(rng, kind, seen, joins, everyone):
    """Choose the task to stop or restart: a join, a likely one, or any."""
    roll = rng.random()
    if roll < 0.25:
        return rng.choice(joins)
    if roll < 0.75:
        wanted = STOPPABLE if kind == "stop" else RESTARTABLE
        likely = [i for i in everyone if seen[i] in wanted]
        if likely:
            return rng.choice(likely)
    return rng.choice(everyone)


@pytest.mark.parametrize("seed", CHAOS_SEEDS)
def test_chaos_stop_and_restart_keeps_the_database_consistent(
    app, chaos_worker, clean, marker_dir, seed
):
    """Eight processes run groups and chains while a client stops and restarts.

    The actions are chosen by ``random.Random(seed)``; their order against the
    workers' transitions is up to the machine. A consistent snapshot of the
    rows is checked every ``SNAPSHOT_EVERY`` actions and when the chaos ends.
    From that snapshot on, every task must be dispatched exactly as often as
    its status then says, while the run settles, and again when its earliest
    unfinished task is restarted once, after which the run must succeed. No
    attempt's body may run twice.
    """
    current_wtflow.register("faults-chaos", chaos_definition())
    began = time.monotonic()
    run = Workflow.create("faults-chaos", data={"marker_dir": str(marker_dir)})
    everyone = [t.id for t in run.tasks]
    names = {t.id: t.model.signature["kwargs"]["name"] for t in run.tasks}
    position = {t.id: t.position for t in run.tasks}
    joins = [i for i in everyone if "join" in names[i]]
    assert len(joins) == CHAOS_BRANCHES * len(CHAOS_WIDTHS) + 1
    created = time.monotonic()
    ignored_before = chaos_worker.count(IGNORED)
    journal = marker_dir.parent / f"chaos-{seed}.log"
    problems = []

    def report(what):
        return f"seed {seed}: {what} (actions in {journal})"

    def expect(rows, rules, when):
        """Compare each task with what ``rules`` predict from ``rows``."""
        now = {t.id: (t.status, t.attempt) for t in Workflow.get(run.id).tasks}
        for id_, (status, attempt) in rows.items():
            end, more = rules.get(status, (None, 0))
            if now[id_] != (end, attempt + more):
                problems.append(
                    f"{names[id_]}: {status} (attempt {attempt}) {when}, then "
                    f"{now[id_][0]} (attempt {now[id_][1]}), not {end} "
                    f"(attempt {attempt + more})"
                )
        assert problems == [], report("; ".join(problems[:20]))
        return now

    # The chaos: a second client, this thread, against eight processes.
    rng = random.Random(seed)
    outcomes = Counter()
    snapshots = 0

    def act(n, kind, target, seen):
        acted = time.monotonic()
        try:
            if kind == "restart run":
                Workflow.get(run.id).restart()
            elif kind == "stop run":
                Workflow.get(run.id).stop()
            elif kind == "restart":
                Task.get(target).restart()
            else:
                Task.get(target).stop()
            outcome = "applied"
        except InvalidStateError:
            _db.session.rollback()
            outcome = "refused"
        outcomes[kind, outcome] += 1
        where = (
            f"node {position[target]:4d} {names[target]:15s} {seen[target]:9s}"
            if target
            else " " * 35
        )
        out.write(
            f"{acted - created:8.3f} {n:3d} {kind:11s} {where} "
            f"{outcome:8s} {time.monotonic() - acted:6.3f} s\n"
        )
        out.flush()
        return outcome

    def statuses():
        _db.session.rollback()
        return dict(
            _db.session.execute(
                select(TaskRun.id, TaskRun.status).where(TaskRun.workflow_id == run.id)
            ).all()
        )

    run.start()
    with open(journal, "w") as out:
        for n in range(CHAOS_ACTIONS):
            if time.monotonic() - created > CHAOS_SECONDS:
                break
            time.sleep(rng.uniform(0.05, 0.2))
            seen = statuses()
            roll = rng.random()
            if roll < 0.04:
                act(n, "restart run", None, seen)
            elif roll < 0.12:
                act(n, "stop run", None, seen)
            else:
                kind = rng.choice(("stop", "restart"))
                act(n, kind, pick(rng, kind, seen, joins, everyone), seen)
            if n % SNAPSHOT_EVERY == SNAPSHOT_EVERY - 1:
                snapshots += 1
                found, _ = snapshot(run.id)
                assert found == [], report(f"after action {n}")
        # It ends by stopping a task, so that the last restart has work too.
        for n in range(n + 1, n + 6):
            seen = statuses()
            active = [i for i in everyone if seen[i] in STOPPABLE]
            if not active or act(n, "stop", rng.choice(active), seen) == "applied":
                break
    found, at_end = snapshot(run.id)
    snapshots += 1
    assert found == [], report("when the chaos ended")
    chaos_end = time.monotonic()

    # Left alone, the run settles; then its earliest unfinished task (and so
    # every cancelled one) is restarted once, and the run succeeds.
    (run,) = wait([run.id], timeout=300)
    settled = time.monotonic()
    before = expect(at_end, SETTLES_TO, "when the chaos ended")
    repaired = None
    if run.status != "success":
        repaired = next(t for t in run.tasks if t.status != "success")
        Task.get(repaired.id).restart()
        (run,) = wait([run.id], timeout=300)
        expect(
            before,
            {"success": ("success", 0), "cancelled": ("success", 1)},
            "before the last restart",
        )
    finished = time.monotonic()
    assert run.status == "success", report(f"run {run.status}")
    assert run.result == "join"

    # No attempt's body ran twice; the successful attempt's body ran.
    ran = attempts = 0
    for task in run.tasks:
        name = names[task.id]
        celery_ids = executions(marker_dir, name)
        ran += len(celery_ids)
        attempts += task.attempt
        if len(set(celery_ids)) != len(celery_ids):
            problems.append(f"{name}: an attempt ran twice: {celery_ids}")
        if len(celery_ids) > task.attempt:
            problems.append(f"{name}: {len(celery_ids)} runs, {task.attempt} attempts")
        if task.model.celery_id not in celery_ids:
            problems.append(f"{name}: the successful attempt never ran")
    assert problems == [], report("; ".join(problems[:20]))

    actions = sum(outcomes.values())
    left = sorted(Counter(status for status, _ in at_end.values()).items())
    applied = sum(v for (_, o), v in outcomes.items() if o == "applied")
    print(
        f"\nchaos seed {seed}: {len(everyone)} tasks; {actions} actions, "
        f"{applied} applied, {actions - applied} refused "
        f"{sorted(outcomes.items())}; {snapshots} snapshots checked; "
        f"tasks when the chaos ended {left}; "
        f"{ran} bodies run for {attempts} attempts; "
        f"{chaos_worker.count(IGNORED) - ignored_before} stale deliveries ignored; "
        f"last restart of {names[repaired.id] if repaired else None}; "
        f"create {created - began:.1f} s, chaos {chaos_end - created:.1f} s, "
        f"settle {settled - chaos_end:.1f} s, finish {finished - settled:.1f} s"
    )
