# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Waiting for a run to finish: ``Workflow.wait`` and its notification."""

import select
import threading
import time

import pytest
from invenio_db import db as _db

from invenio_wtflow import Workflow
from invenio_wtflow.engine import orchestrator, waiting
from invenio_wtflow.errors import WaitTimeoutError, WorkflowNotFoundError


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


@pytest.fixture()
def listener(app):
    """A psycopg2 connection listening on the engine's channel."""
    if _db.engine.dialect.name != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    connection = _db.engine.raw_connection()
    raw = connection.driver_connection
    raw.autocommit = True
    with raw.cursor() as cursor:
        cursor.execute(f"LISTEN {waiting.CHANNEL}")
    yield raw
    with raw.cursor() as cursor:
        cursor.execute(f"UNLISTEN {waiting.CHANNEL}")
    raw.autocommit = False
    connection.close()


def heard(raw, seconds=0.5):
    """The payloads notified within ``seconds``."""
    select.select([raw], [], [], seconds)
    raw.poll()
    payloads = [n.payload for n in raw.notifies]
    raw.notifies.clear()
    return payloads


def test_the_transaction_that_finishes_a_run_notifies_it(app, clean, broker, listener):
    wf = Workflow.create("add-chain", start=True)
    broker.deliver(lambda m: m is broker.messages[0])  # the run goes on
    assert heard(listener) == []
    broker.deliver_all()
    assert heard(listener) == [str(wf.id)]


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
