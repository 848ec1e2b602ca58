# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Fault injection with real prefork workers on PostgreSQL and Redis.

Run it alone with ``pytest -m faults``. Selected when
``SQLALCHEMY_DATABASE_URI`` points to PostgreSQL and ``WTFLOW_TEST_BROKER_URL``
to a Redis broker. The shared broker is used on database 8; the broker outage
test starts (and stops) its own ``redis-server`` on port 6391 and never touches
the shared one.
"""

import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from celery import chain
from celery import current_app as current_celery_app
from flask_security.utils import hash_password
from invenio_access.models import ActionUsers
from invenio_db import db as _db

from invenio_wtflow import Workflow, current_wtflow
from invenio_wtflow.engine import dispatch
from invenio_wtflow.engine.check import check_workflow
from invenio_wtflow.permissions import wtflow_admin_action

from .example_tasks import record, slow_record


def _db8(url):
    """The same Redis server, database 8 (kept apart from other runs)."""
    if not url:
        return url
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/8"))


BROKER_URL = _db8(os.environ.get("WTFLOW_TEST_BROKER_URL"))
DB_URI = os.environ.get("SQLALCHEMY_DATABASE_URI", "")
PRIVATE_PORT = 6391
PRIVATE_BROKER_URL = f"redis://127.0.0.1:{PRIVATE_PORT}/0"

pytestmark = [
    pytest.mark.faults,
    pytest.mark.integration,
    pytest.mark.skipif(
        not (BROKER_URL and DB_URI.startswith("postgresql")),
        reason="needs SQLALCHEMY_DATABASE_URI (PostgreSQL) and WTFLOW_TEST_BROKER_URL",
    ),
]

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = 4
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


def _start_worker(broker_url, node, log):
    """Start a prefork worker consuming from ``broker_url``, logging to ``log``."""
    env = dict(
        os.environ,
        SQLALCHEMY_DATABASE_URI=DB_URI,
        WTFLOW_TEST_BROKER_URL=broker_url,
        PYTHONPATH=str(ROOT),
    )
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tests.worker:celery",
                "worker",
                "--pool=prefork",
                f"--concurrency={CONCURRENCY}",
                "--loglevel=INFO",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--prefetch-multiplier=1",
                "-n",
                f"{node}-{os.getpid()}@%h",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
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


def _stop(proc, timeout=30):
    """Terminate a process this module started, and reap it."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:  # pragma: no cover
        proc.kill()
        proc.wait()


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
            _stop(worker.proc)
            pytest.fail(f"worker did not start:\n{log.read_text()[-3000:]}")
    yield worker
    _stop(worker.proc)


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
        _stop(self.proc, timeout=10)
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
        _stop(worker.proc)
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
# 4. Twenty workflows started at once through the REST API
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
        for task in run.tasks:
            history = task.history()
            assert_no_repeated_transition(history)
            assert transitions(history) == ["pending", "queued", "running", "success"]
