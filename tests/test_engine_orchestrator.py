# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Orchestrator transitions: cost per task and the status rule."""

import gc
import os
from contextlib import contextmanager
from datetime import timedelta

import pytest
from celery import chain, chord
from celery import current_app as current_celery_app
from celery import group
from invenio_db import db as _db
from invenio_db.uow import Operation
from sqlalchemy import event, text
from sqlalchemy.exc import OperationalError

from invenio_wtflow import Workflow, current_wtflow
from invenio_wtflow.api import Task
from invenio_wtflow.engine import dispatch, orchestrator
from invenio_wtflow.engine.status import default_status
from invenio_wtflow.errors import InvalidStateError
from invenio_wtflow.models import TaskRun, WorkflowRun, utcnow
from invenio_wtflow.tasks import requeue_stale

from .example_tasks import add, loses_its_claim, tsum


@contextmanager
def count_statements(db):
    """Count the SQL statements sent to the database.

    A connection prepares a statement once (see ``engine.prepared``): its
    ``PREPARE`` is not counted.
    """
    statements = []

    def record(conn, cursor, statement, *args):
        if not statement.startswith("PREPARE "):
            statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(db.engine, "before_cursor_execute", record)


def hot_path_cost(db, monkeypatch, width, shared=False):
    """Statements to claim and complete the first and the last group member.

    :param shared: record the successes as a worker does (the shared way
        when it can), not under the root lock.
    """
    name = f"width-{width}-{shared}"
    current_wtflow.register(name, chord([add.s(i, i) for i in range(width)], tsum.s()))
    monkeypatch.setattr(dispatch, "_send", lambda message: None)
    wf = Workflow.create(name).start()
    members = [(t.id, t.model.celery_id) for t in wf.tasks[:-1]]

    def claim_and_succeed(task_id, celery_id):
        claimed = orchestrator.atomic(orchestrator.claim, task_id, celery_id)
        if shared:
            orchestrator.record_success(task_id, celery_id, 1, 0, claimed.dependants)
        else:
            orchestrator.atomic(orchestrator.succeed, task_id, celery_id, 1)

    with count_statements(db) as first:
        claim_and_succeed(*members[0])
    for member in members[1:-1]:
        claim_and_succeed(*member)
    with count_statements(db) as last:  # fires the join
        claim_and_succeed(*members[-1])
    assert Workflow.get(wf.id).tasks[-1].status == "queued"
    # Savepoints come from the test's outer transaction, and SQLite's BEGIN
    # from where the session's transaction began: not counted.
    return [
        len([s for s in c if "SAVEPOINT" not in s and not s.startswith("BEGIN")])
        for c in (first, last)
    ]


def test_statements_per_task_do_not_grow_with_the_workflow(app, clean, monkeypatch):
    """Real commits (``clean``): the ``db`` fixture's transaction would keep
    Continuum's transaction object from one commit to the next."""
    db = _db
    small = hot_path_cost(db, monkeypatch, 10)
    large = hot_path_cost(db, monkeypatch, 80)
    assert small == large
    if db.engine.dialect.name == "postgresql":
        # claim: one statement (the conditional update, Continuum's
        # transaction and the version); success: lock the root, then one
        # statement for the conditional update, the join's counter (and its
        # update to ``queued``), the run's status derived from its tasks,
        # Continuum's transaction and the versions.
        assert small == [3, 3]
    else:
        # claim: the update, Continuum's transaction and the version;
        # success: lock, update, counter, status count, transaction,
        # version; the join adds its update to ``queued``.
        assert small == [9, 10]
    # The shared way: the status count becomes a look for a waiting task
    # while the join waits, and is not needed once the join is queued. On
    # PostgreSQL the success's statement versions its changes itself and
    # looks for the waiting task.
    shared = hot_path_cost(db, monkeypatch, 10, shared=True)
    assert shared == hot_path_cost(db, monkeypatch, 80, shared=True)
    assert shared == ([3, 3] if db.engine.dialect.name == "postgresql" else [9, 9])


def claimed_members(monkeypatch, name, definition):
    """A started run of ``definition`` whose first tasks are all claimed."""
    current_wtflow.register(name, definition)
    monkeypatch.setattr(dispatch, "_send", lambda message: None)
    wf = Workflow.create(name, start=True)
    claimed = []
    for task in wf.tasks:
        if task.model.status == "queued":
            row = orchestrator.atomic(orchestrator.claim, task.id, task.model.celery_id)
            claimed.append((task.id, task.model.celery_id, row.dependants))
    return wf, claimed


def test_member_successes_that_keep_the_run_running_skip_the_root_lock(
    app, db, monkeypatch, exclusive_calls
):
    wf, members = claimed_members(
        monkeypatch, "three", chord([add.s(i, i) for i in range(3)], tsum.s())
    )
    assert [m[2] for m in members] == [1, 1, 1]
    for task_id, celery_id, dependants in members[:2]:
        assert orchestrator.record_success(task_id, celery_id, 2, 0, dependants)
        assert Workflow.get(wf.id).status == "running"
    join = Workflow.get(wf.id).tasks[-1].model
    assert (join.status, join.remaining) == ("pending", 1)
    # The last member queues the join: still shared.
    assert orchestrator.record_success(*members[2][:2], 4, 0, members[2][2])
    join = Workflow.get(wf.id).tasks[-1].model
    assert join.status == "queued" and exclusive_calls == []
    # The join has no dependant: it finishes the run under the root lock.
    row = orchestrator.atomic(orchestrator.claim, join.id, join.celery_id)
    assert row.dependants == 0
    assert orchestrator.record_success(join.id, join.celery_id, 6, 0, row.dependants)
    assert exclusive_calls == [join.id]
    assert Workflow.get(wf.id).status == "success"
    # A stale report changes nothing, either way.
    assert not orchestrator.record_success(*members[0][:2], 2, 0, 1)


def test_a_success_beside_a_waiting_task_takes_the_root_lock(
    app, db, monkeypatch, exclusive_calls
):
    wf, (first, second) = claimed_members(
        monkeypatch, "pair", chord([add.s(1, 1), add.s(2, 2)], tsum.s())
    )
    db.session.query(TaskRun).filter_by(id=first[0]).update({"status": "waiting"})
    db.session.commit()
    assert orchestrator.record_success(second[0], second[1], 4, 0, second[2])
    # Only a waiting task is left unfinished upstream of the join.
    assert exclusive_calls == [second[0]]
    assert Workflow.get(wf.id).status == "waiting"


def test_a_failed_run_records_successes_under_the_root_lock(
    app, db, monkeypatch, exclusive_calls
):
    wf, (first, other) = claimed_members(
        monkeypatch, "branches", group(chain(add.si(1, 1), add.si(2, 2)), add.si(3, 3))
    )
    assert orchestrator.atomic(orchestrator.fail, other[0], other[1], "boom")
    # The first branch goes on, under the root lock: the run has failed.
    assert orchestrator.record_success(first[0], first[1], 2, 0, first[2])
    assert exclusive_calls == [first[0]]
    wf = Workflow.get(wf.id)
    assert wf.status == "failure" and wf.tasks[1].model.status == "queued"


def test_an_own_status_rule_is_applied_under_the_root_lock(
    app, db, monkeypatch, exclusive_calls
):
    class HalfDone(Workflow):
        definition = chord([add.s(1, 1), add.s(2, 2)], tsum.s())

        def compute_status(self, counts):
            return "waiting" if counts.get("success") else default_status(counts)

    wf, (first, _) = claimed_members(monkeypatch, "half-done", HalfDone)
    assert orchestrator.record_success(first[0], first[1], 2, 0, first[2])
    assert exclusive_calls == [first[0]]
    assert Workflow.get(wf.id).status == "waiting"


@pytest.mark.parametrize("own_rule", [False, True])
def test_a_root_run_finishes_from_its_locked_row(app, db, monkeypatch, own_rule):
    """The run-finishing success reads a root run as a row, unless a rule needs it."""
    ruled = []

    class OwnRule(Workflow):
        definition = add.si(1, 1)

        def compute_status(self, counts):
            ruled.append(type(self.model))
            return default_status(counts)

    wf, ((task_id, celery_id, _),) = claimed_members(
        monkeypatch, f"one-{own_rule}", OwnRule if own_rule else add.si(1, 1)
    )
    ruled.clear()
    loads = []

    def on_load(target, context):
        loads.append(target.id)

    _db.session.expunge_all()
    event.listen(WorkflowRun, "load", on_load)
    try:
        uow = orchestrator.EngineUnitOfWork(_db.session)
        assert orchestrator.succeed(uow, task_id, celery_id, 2)
    finally:
        event.remove(WorkflowRun, "load", on_load)
    assert loads == ([wf.id] if own_rule else [])
    uow.commit()
    wf = Workflow.get(wf.id)
    assert (wf.status, wf.result) == ("success", 2)
    assert [v["status"] for v in wf.history()] == ["running", "success"]
    assert ruled == ([WorkflowRun] if own_rule else [])


@pytest.mark.skipif(
    not os.environ.get("SQLALCHEMY_DATABASE_URI", "").startswith("postgresql"),
    reason="row lock modes need PostgreSQL",
)
@pytest.mark.parametrize("shared", [True, False])
def test_which_lock_a_success_holds_on_the_root(app, clean, monkeypatch, shared):
    wf, (first, _) = claimed_members(
        monkeypatch, f"lock-{shared}", chord([add.s(1, 1), add.s(2, 2)], tsum.s())
    )
    record = orchestrator.succeed_shared if shared else orchestrator.succeed
    assert record(orchestrator.EngineUnitOfWork(_db.session), first[0], first[1], 2)
    try:
        # Another transaction, while the success is not committed yet:
        with _db.engine.connect() as other:

            def lock(mode):
                """Lock the root in ``mode``, or fail after 200 ms of waiting."""
                try:
                    other.execute(text("SET LOCAL lock_timeout = '200ms'"))
                    other.execute(
                        text(f"SELECT id FROM wtflow_workflow WHERE id = :id {mode}"),
                        {"id": wf.id},
                    )
                    return True
                except OperationalError as exc:
                    assert "lock timeout" in str(exc)
                    return False
                finally:
                    other.rollback()

            # Other successes get in only beside a shared success; graph
            # changes wait for both.
            assert lock("FOR KEY SHARE") is shared
            assert lock("FOR UPDATE") is False
    finally:
        _db.session.rollback()


@pytest.mark.parametrize(
    "counts, status",
    [
        ({"pending": 3}, "pending"),
        ({"queued": 1, "pending": 2}, "running"),
        ({"success": 1, "pending": 2}, "running"),
        ({"waiting": 1, "pending": 2}, "waiting"),
        ({"running": 1, "waiting": 1}, "running"),
        ({"failure": 1, "running": 1, "cancelled": 2}, "failure"),
        ({"success": 3}, "success"),
        ({}, "success"),
        ({"success": 1, "cancelled": 2}, "cancelled"),
    ],
)
def test_default_status_rule(counts, status):
    assert default_status(counts).value == status


def test_sweeper_task(app, db, monkeypatch):
    monkeypatch.setattr(dispatch, "_send", lambda message: None)
    wf = Workflow.create("add-chain").start()
    monkeypatch.undo()
    app.config["WTFLOW_REQUEUE_AFTER"] = 0
    try:
        assert requeue_stale.delay().get() == 1
    finally:
        app.config["WTFLOW_REQUEUE_AFTER"] = 300
    assert Workflow.get(wf.id).result == 60


def test_a_recorded_retry_cannot_be_claimed_twice(app, db, monkeypatch):
    monkeypatch.setattr(dispatch, "_send", lambda message: None)
    wf = Workflow.create("add-chain").start()
    task = wf.tasks[0].model
    task_id, celery_id = task.id, task.celery_id
    atomic = orchestrator.atomic
    assert atomic(orchestrator.claim, task_id, celery_id, 0)
    assert atomic(orchestrator.retry, task_id, celery_id, 0, "boom")
    # An acks-late redelivery or a sweeper re-send of the first message:
    assert atomic(orchestrator.claim, task_id, celery_id, 0) is None
    # The retry message itself, once:
    assert atomic(orchestrator.claim, task_id, celery_id, 1)
    assert atomic(orchestrator.claim, task_id, celery_id, 1) is None
    # The superseded execution cannot report.
    assert not atomic(orchestrator.succeed, task_id, celery_id, 3, 0)
    assert atomic(orchestrator.succeed, task_id, celery_id, 3, 1)


def test_restarting_a_member_after_stop_reruns_the_stopped_group(app, db):
    wf = Workflow.create("fan-out")
    wf.stop()
    Task.get(wf.tasks[0].id).restart()
    wf = Workflow.get(wf.id)
    assert wf.status == "success" and wf.result == 20


def expire_lease(db, task_id):
    """Move a running attempt's lease into the past."""
    db.session.query(TaskRun).filter_by(id=task_id).update(
        {TaskRun.lease_expires_at: utcnow() - timedelta(seconds=1)}
    )
    db.session.commit()


def claimed_run(monkeypatch, name="add-chain"):
    """A run whose first task was claimed by a worker that then vanished."""
    monkeypatch.setattr(dispatch, "_send", lambda message: None)
    wf = Workflow.create(name).start()
    task = wf.tasks[0].model
    orchestrator.atomic(orchestrator.claim, task.id, task.celery_id)
    monkeypatch.undo()
    return wf, task.id


def test_an_expired_lease_runs_a_new_attempt(app, db, monkeypatch):
    wf, task_id = claimed_run(monkeypatch)
    assert dispatch.requeue_stale(older_than=3600) == 0  # lease still running
    expire_lease(db, task_id)
    assert dispatch.requeue_stale(older_than=3600) == 1
    wf = Workflow.get(wf.id)
    assert wf.status == "success" and wf.result == 60
    first = wf.tasks[0]
    assert first.attempt == 2
    assert any("presumed lost" in (h["message"] or "") for h in first.history())


def test_an_expired_lease_fails_the_task_after_max_attempts(app, db, monkeypatch):
    app.config["WTFLOW_MAX_ATTEMPTS"] = 1
    try:
        wf, task_id = claimed_run(monkeypatch)
        expire_lease(db, task_id)
        assert dispatch.requeue_stale(older_than=3600) == 1
    finally:
        app.config["WTFLOW_MAX_ATTEMPTS"] = 3
    wf = Workflow.get(wf.id)
    assert wf.status == "failure"
    assert [t.status for t in wf.tasks] == ["failure", "cancelled", "cancelled"]
    assert wf.tasks[0].error.startswith("LeaseExpired")


def test_reporting_renews_the_lease(app, db, monkeypatch):
    wf, task_id = claimed_run(monkeypatch)
    task = TaskRun.query.get(task_id)
    expire_lease(db, task_id)
    assert orchestrator.atomic(
        orchestrator.report, task_id, task.celery_id, "still here", None, 0, 60
    )
    renewed = TaskRun.query.get(task_id).lease_expires_at
    assert renewed > utcnow() + timedelta(seconds=50)
    assert dispatch.requeue_stale(older_than=3600) == 0


def lose_claim(db, task_id):
    """Leave a claimed task as a crash before the claim's flush would: ``queued``."""
    db.session.query(TaskRun).filter_by(id=task_id).update(
        {
            TaskRun.status: "queued",
            TaskRun.started_at: None,
            TaskRun.lease_expires_at: None,
        }
    )
    db.session.commit()


def versions(task_id):
    """How many versions a task has."""
    return len(Task.get(task_id).history())


def test_a_lost_claim_is_claimed_again_by_the_attempts_next_report(
    app, db, monkeypatch, caplog
):
    wf, task_id = claimed_run(monkeypatch)
    celery_id = TaskRun.query.get(task_id).celery_id
    lose_claim(db, task_id)
    assert orchestrator.atomic(
        orchestrator.report, task_id, celery_id, "alive", None, 0, 60
    )
    task = TaskRun.query.get(task_id)
    assert (task.status, task.message) == ("running", "alive")
    assert task.started_at is not None
    assert utcnow() + timedelta(seconds=50) < task.lease_expires_at
    assert task.lease_expires_at < utcnow() + timedelta(seconds=70)
    assert "its claim was lost" in caplog.text


def test_a_lost_claim_is_claimed_again_by_a_body_acting(app, db, monkeypatch):
    wf, task_id = claimed_run(monkeypatch)
    celery_id = TaskRun.query.get(task_id).celery_id
    lose_claim(db, task_id)

    def spawn(uow):
        return orchestrator.lock_acting(task_id, celery_id, 0, 60, "spawn")[1].status

    assert orchestrator.atomic(spawn) == "running"
    assert TaskRun.query.get(task_id).status == "running"


def test_a_lost_claim_of_another_attempt_is_not_claimed(app, db, monkeypatch):
    wf, task_id = claimed_run(monkeypatch)
    lose_claim(db, task_id)
    before = versions(task_id)
    assert not orchestrator.atomic(
        orchestrator.report, task_id, "another attempt", "late", None, 0, None
    )
    assert not orchestrator.atomic(
        orchestrator.fail, task_id, "another attempt", "Late", None, 0
    )
    assert not orchestrator.record_success(task_id, "another attempt", 1)
    assert TaskRun.query.get(task_id).status == "queued"
    assert versions(task_id) == before


def test_a_recorded_retry_is_not_taken_for_a_lost_claim(app, db, monkeypatch):
    """Queued again by a recorded retry, under the same Celery id: a late
    report of the try before it (a lower retry count) claims nothing."""
    wf, task_id = claimed_run(monkeypatch)
    celery_id = TaskRun.query.get(task_id).celery_id
    assert orchestrator.atomic(orchestrator.retry, task_id, celery_id, 0, "again")
    before = versions(task_id)
    assert not orchestrator.atomic(
        orchestrator.report, task_id, celery_id, "late", None, 0, None
    )
    assert not orchestrator.atomic(
        orchestrator.fail, task_id, celery_id, "Late", None, 0
    )
    assert not orchestrator.record_success(task_id, celery_id, 1, 0)
    task = TaskRun.query.get(task_id)
    assert (task.status, task.retries) == ("queued", 1)
    assert versions(task_id) == before


def test_a_stale_attempt_is_not_claimed_again(app, db, monkeypatch):
    """Recovered after its lease (a new attempt), or stopped: the old
    attempt's reports stay unapplied and its acts refused."""
    wf, task_id = claimed_run(monkeypatch)
    old = TaskRun.query.get(task_id).celery_id
    expire_lease(db, task_id)
    monkeypatch.setattr(dispatch, "_send", lambda message: None)
    assert dispatch.requeue_stale(older_than=3600) == 1
    task = TaskRun.query.get(task_id)
    assert (task.status, task.attempt) == ("queued", 2)
    assert not orchestrator.atomic(orchestrator.report, task_id, old, "late", None, 0)
    assert not orchestrator.record_success(task_id, old, 1, 0)
    wf.stop()
    new = TaskRun.query.get(task_id).celery_id
    assert not orchestrator.atomic(orchestrator.report, task_id, new, "late", None, 0)
    with pytest.raises(InvalidStateError):
        orchestrator.atomic(
            lambda uow: orchestrator.lock_acting(task_id, new, 0, None, "spawn")
        )
    assert TaskRun.query.get(task_id).status == "cancelled"


@pytest.mark.parametrize(
    "then, status, result",
    [
        ("done", "success", "done"),
        ("heartbeat", "success", True),
        ("fail", "failure", None),
    ],
)
def test_a_body_that_lost_its_claim_has_its_outcome_recorded(
    app, db, then, status, result
):
    """The claim lost while the body ran (a crash before its flush): the
    body's heartbeat or outcome claims the attempt again, and the outcome
    is recorded, not refused as a stale one's."""
    name = f"loses-its-claim-{then}"
    current_wtflow.register(name, chain(loses_its_claim.si(then), add.si(1, 2)))
    wf = Workflow.create(name).start()
    lost, after = wf.tasks
    assert (wf.status, lost.status, lost.result) == (status, status, result)
    assert after.status == ("success" if status == "success" else "cancelled")
    assert lost.model.started_at is not None
    if status == "failure":
        assert lost.error.startswith("RuntimeError: failed after losing its claim")


def test_a_body_that_lost_its_claim_spawns_with_its_pending_work(app, db):
    """Spawning claims the attempt again in the spawn's own transaction,
    which commits what the body left pending in the session."""
    current_wtflow.register("loses-its-claim-spawn", loses_its_claim.si("spawn"))
    wf = Workflow.create("loses-its-claim-spawn").start()
    [lost] = wf.tasks
    assert (wf.status, lost.status) == ("success", "success")
    assert Workflow.get(lost.result).status == "success"
    assert Workflow.get(wf.id).data == {"pending": "kept"}


class Recorder(Operation):
    """An operation that records the phases it is called in."""

    def __init__(self, calls):
        """Record into ``calls``."""
        self.calls = calls

    def on_post_commit(self, uow):
        """Record the post-commit phase."""
        self.calls.append("post-commit")

    def on_rollback(self, uow):
        """Record the rollback phase."""
        self.calls.append("rollback")


def test_the_engine_unit_of_work_opens_no_savepoint(app, db, monkeypatch):
    monkeypatch.setattr(dispatch, "_send", lambda message: None)
    wf = Workflow.create("add-chain").start()
    first = wf.tasks[0]
    calls = []

    def claim(uow):
        uow.register(Recorder(calls))
        return orchestrator.claim(uow, first.id, first.model.celery_id)

    with count_statements(db) as statements:
        assert orchestrator.atomic(claim) is not None
    assert calls == ["post-commit"]
    # The test's outer transaction turns the session's own transaction into
    # one savepoint; the unit of work and Continuum add none of their own.
    assert len([s for s in statements if s.startswith("SAVEPOINT")]) <= 1
    assert Workflow.get(wf.id).tasks[0].status == "running"

    def fail(uow):
        uow.register(Recorder(calls))
        orchestrator.succeed(uow, first.id, first.model.celery_id, 2)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        orchestrator.atomic(fail)
    assert calls == ["post-commit", "rollback"]
    assert Workflow.get(wf.id).tasks[0].status == "running"


def test_attempts_do_not_write_the_result_backend(app, monkeypatch):
    celery = current_celery_app
    sent = []
    monkeypatch.setitem(celery.conf, "task_always_eager", False)
    monkeypatch.setattr(celery, "send_task", lambda name, **kw: sent.append(kw))
    message = dispatch.Message(
        task_run_id="run", celery_id="attempt", name=add.name, options={}
    )
    assert dispatch._send(message)
    assert sent[0]["ignore_result"] is True
    assert sent[0]["task_id"] == "attempt"


def test_a_published_attempt_asks_nothing_of_the_result_backend(app, monkeypatch):
    """An ``AsyncResult`` tells the backend nobody waits for it when it is
    collected (Redis: an ``UNSUBSCRIBE`` per message sent); a publish makes
    none, and the message still reaches the broker."""
    celery = current_celery_app
    monkeypatch.setitem(celery.conf, "task_always_eager", False)
    asked, backend = [], celery.backend
    for name in ("on_task_call", "add_pending_result", "remove_pending_result"):
        monkeypatch.setattr(
            backend, name, lambda *a, name=name, **k: asked.append(name)
        )
    message = dispatch.Message(
        task_run_id="run", celery_id="unread-attempt", name=add.name, options={}
    )
    with celery.connection_for_read() as connection:
        queue = connection.SimpleQueue(celery.conf.task_default_queue)
        queue.clear()
        assert dispatch._send(message)
        gc.collect()
        received = queue.get(timeout=5)
        received.ack()
        queue.close()
    assert asked == []
    assert received.headers["id"] == "unread-attempt"


@pytest.mark.parametrize("args", [(), ("root-id",), ("it's\n" + "x" * 2000,)])
def test_a_published_message_carries_the_reprs_celery_would_write(
    app, monkeypatch, args
):
    """Given, not computed by Celery's own call of ``saferepr`` at every publish."""
    from celery.app import amqp
    from celery.utils.saferepr import saferepr

    celery = current_celery_app
    monkeypatch.setitem(celery.conf, "task_always_eager", False)
    computed = []
    monkeypatch.setattr(amqp, "saferepr", lambda *a, **k: computed.append(a))
    message = dispatch.Message(
        task_run_id="run",
        celery_id="repr-attempt",
        name=add.name,
        options={},
        args=args,
    )
    with celery.connection_for_read() as connection:
        queue = connection.SimpleQueue(celery.conf.task_default_queue)
        queue.clear()
        assert dispatch._send(message)
        received = queue.get(timeout=5)
        received.ack()
        queue.close()
    assert computed == []
    assert received.headers["argsrepr"] == saferepr(args, 1024)
    assert received.headers["kwargsrepr"] == saferepr({}, 1024)


def test_an_attempt_published_by_a_task_is_not_in_its_trail(app, monkeypatch):
    """What ``send_task`` hands back has no ``as_tuple``: in the trail of a
    task whose result is stored, it would break that store."""
    from celery._state import _task_stack

    celery = current_celery_app
    monkeypatch.setitem(celery.conf, "task_always_eager", False)
    message = dispatch.Message(
        task_run_id="run", celery_id="child-attempt", name=add.name, options={}
    )
    add.push_request(id="parent", called_directly=False, children=[])
    _task_stack.push(add)
    try:
        assert celery.current_worker_task is add
        assert dispatch._send(message)
        assert add.request.children == []
    finally:
        _task_stack.pop()
        add.pop_request()
        with celery.connection_for_read() as connection:
            connection.SimpleQueue(celery.conf.task_default_queue).clear()


@pytest.mark.parametrize("dependants", [0, 1])
def test_a_success_given_its_runs_locks_them_by_key(app, db, monkeypatch, dependants):
    """The claim returns the task's run and root: no look-up in the lock."""
    wf, members = claimed_members(
        monkeypatch, "two", chord([add.s(i, i) for i in range(2)], tsum.s())
    )
    task_id, celery_id, _ = members[0]
    locks, lock_workflow = [], orchestrator.lock_workflow

    def spy(*args, **kwargs):
        locks.append((args, kwargs))
        return lock_workflow(*args, **kwargs)

    monkeypatch.setattr(orchestrator, "lock_workflow", spy)
    runs = (wf.model.root_id, wf.id)
    assert orchestrator.record_success(task_id, celery_id, 2, 0, dependants, runs)
    assert [(a, k.get("root_id"), k.get("task_id")) for a, k in locks] == [
        ((wf.id,), wf.id, None)
    ]
    assert Workflow.get(wf.id).tasks[0].status == "success"


@pytest.mark.parametrize("name", ["fan-out", "two-at-a-time"])
def test_a_creation_whose_commit_answer_was_lost_is_found_on_retry(
    app, clean, monkeypatch, name
):
    """The first try committed, then its connection broke before the answer:
    the retry (same run id) returns that run and publishes its queued tasks,
    instead of inserting a second run or failing on the id."""
    sent = []
    monkeypatch.setattr(dispatch, "_send", lambda m: sent.append(m) or True)
    monkeypatch.setattr(orchestrator.time, "sleep", lambda seconds: None)
    commit, tries = orchestrator.EngineUnitOfWork.commit, []

    def lose_first_answer(uow):
        tries.append(uow.retried)
        if len(tries) == 1:
            uow.session.commit()
            raise OperationalError("COMMIT", {}, Exception("connection lost"))
        return commit(uow)

    monkeypatch.setattr(orchestrator.EngineUnitOfWork, "commit", lose_first_answer)
    wf = Workflow.create(name, start=True)
    assert tries == [False, True] and wf.created_now
    assert [run.id for run in _db.session.query(WorkflowRun).all()] == [wf.id]
    tasks = _db.session.query(TaskRun).filter_by(workflow_id=wf.id).all()
    queued = {t.celery_id: str(t.id) for t in tasks if t.status == "queued"}
    assert queued and {m.celery_id: m.task_run_id for m in sent} == queued


def test_a_transaction_sent_alone_begins_none_in_the_session(app, clean):
    """A unit of work whose statements all went alone (or none at all)
    leaves the session with nothing to commit: its operations run after it,
    without an empty transaction begun and committed in the session."""
    began, ran = [], []

    class Noted(Operation):
        def on_commit(self, uow):
            ran.append("commit")

        def on_post_commit(self, uow):
            ran.append("post-commit")

    def note(uow):
        uow.register(Noted())
        return "done"

    def begin(session, transaction):
        began.append(transaction)

    session = _db.session()
    session.commit()  # end whatever the fixtures began
    event.listen(session, "after_transaction_create", begin)
    try:
        assert orchestrator.atomic(note) == "done"
    finally:
        event.remove(session, "after_transaction_create", begin)
    assert (began, ran) == ([], ["commit", "post-commit"])


def test_a_claim_sent_alone_leaves_the_session_without_a_transaction(
    app, clean, monkeypatch
):
    if _db.engine.dialect.name != "postgresql":
        pytest.skip("statements are sent alone on PostgreSQL only")
    monkeypatch.setattr(dispatch, "_send", lambda message: True)
    wf = Workflow.create("add-chain", start=True)
    first = wf.tasks[0].model
    task_id, celery_id = first.id, first.celery_id
    session = _db.session()
    session.commit()
    began = []

    def begin(session, transaction):
        began.append(transaction)

    event.listen(session, "after_transaction_create", begin)
    try:
        assert orchestrator.atomic(orchestrator.claim, task_id, celery_id)
    finally:
        event.remove(session, "after_transaction_create", begin)
    assert began == []
