# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Workflows that grow their graph: populate(), callbacks, the root's orchestrator."""

import os
import queue
import threading
import time
import uuid
from datetime import timedelta

import pytest
from invenio_db import db as _db
from sqlalchemy import text

from invenio_wtflow import Workflow
from invenio_wtflow.api import Task
from invenio_wtflow.engine import dispatch, dynamic, orchestrator
from invenio_wtflow.engine.check import check_workflow
from invenio_wtflow.errors import (
    InvalidDataError,
    InvalidDefinitionError,
    InvalidStateError,
)
from invenio_wtflow.models import TaskRun, WorkflowRun, utcnow
from invenio_wtflow.tasks import orchestrate

from .example_tasks import (
    BadCallback,
    RegressionAnalysis,
    SlowPopulate,
    Unsteady,
    add,
    boom,
)

ORCHESTRATE = dynamic.ORCHESTRATE_TASK
ON_POSTGRESQL = os.environ.get("SQLALCHEMY_DATABASE_URI", "").startswith("postgresql")


@pytest.fixture(scope="module")
def app_config(app_config):
    """On PostgreSQL, a connection for each of the 50 completing threads.

    Otherwise they would queue for the pool rather than for the root lock, as
    completions from separate worker processes do.
    """
    if ON_POSTGRESQL:
        app_config["SQLALCHEMY_ENGINE_OPTIONS"] = {
            "pool_size": 60,
            "connect_args": {"options": "-c timezone=UTC"},
        }
    return app_config


def is_pass(message):
    """Whether a kept message is an orchestrator pass."""
    return message.name == ORCHESTRATE


def nodes(run):
    """``{label: task}`` of a run: static and populate nodes by name, others by key."""
    return {t.key or t.name.rsplit(".", 1)[-1]: t for t in Workflow.get(run.id).tasks}


def root_row(run):
    """The run's root row, fresh from the database."""
    _db.session.expire_all()
    return _db.session.get(WorkflowRun, Workflow.get(run.id).root_id)


def consistent(*runs):
    """Assert the consistency check finds nothing in each run."""
    for run in runs:
        assert check_workflow(run.id) == [], run


def test_populate_declares_nodes_and_a_callback_wires_what_follows(app, db):
    wf = Workflow.create("regression", data={"architectures": ["x86", "arm"]})
    wf.start()
    wf = Workflow.get(wf.id)
    assert wf.status == "success"
    by = nodes(wf)
    assert [t.kind for t in wf.tasks] == ["populate", None, None, "callback", None]
    assert (by["x86"].result, by["arm"].result) == ({"arch": "x86"}, {"arch": "arm"})
    # The callback ran once its dependencies succeeded, and decided the report.
    assert by["compare"].result == {"builds": 2}
    assert wf.data["summary"] == "arm,x86"
    report = wf.tasks[-1]
    assert report.result == "published arm,x86"
    edges = wf.dependencies()
    assert set(edges[by["compare"].id]) == {by["x86"].id, by["arm"].id}
    assert edges[report.id] == [by["compare"].id]
    # A run without a canvas returns its callbacks' results.
    assert wf.result == {"compare": {"builds": 2}}
    statuses = [h["status"] for h in by["compare"].history()]
    assert statuses == ["pending", "queued", "success"]
    consistent(wf)


def test_a_callback_adds_tasks_and_a_sub_workflow(app, db):
    wf = Workflow.create("grow-from-callback").start()
    wf = Workflow.get(wf.id)
    assert wf.status == "success"
    by = nodes(wf)
    assert by["fan"].result == 3
    assert (by["2"].result, by["3"].result) == (6, 9)
    assert by["total"].result == 15
    (child,) = wf.children()[0]
    assert (child.name, child.data, child.result) == (
        "transcode-one",
        {"video_id": 3, "quality": "hd"},
        "3@hd",
    )
    assert child.root_id == wf.id
    # With a canvas, the run's result is the canvas's.
    assert wf.result == 3
    consistent(wf, child)


def test_a_run_is_never_success_while_its_orchestrator_has_work(app, db, broker):
    wf = Workflow.create("regression", data={"architectures": ["x86"]}).start()
    assert [m.name for m in broker.messages] == [ORCHESTRATE]
    assert Workflow.get(wf.id).status == "running"
    broker.deliver(is_pass)
    broker.deliver(lambda m: not is_pass(m))  # the build
    wf = Workflow.get(wf.id)
    by = nodes(wf)
    assert by["x86"].status == "success"
    # The callback is ready and populate must run again: not finished.
    assert (by["populate"].status, by["compare"].status) == ("queued", "queued")
    assert wf.status == "running"
    consistent(wf)
    broker.deliver(is_pass)  # compare, then populate wires the report
    assert Workflow.get(wf.id).status == "running"
    broker.deliver(lambda m: not is_pass(m))  # the report
    assert nodes(wf)["populate"].status == "queued"
    assert Workflow.get(wf.id).status == "running"
    broker.deliver_all()
    assert Workflow.get(wf.id).status == "success"
    consistent(wf)


def test_requests_wait_for_one_pass_and_share_one_message(app, db, broker):
    wf = Workflow.create("slow-populate", data={"items": ["a", "b", "c"]}).start()
    broker.deliver(is_pass)
    before = root_row(wf)
    requests, passes = before.orchestration_requests, before.orchestrations
    broker.deliver(lambda m: not is_pass(m))  # three builds succeed
    root = root_row(wf)
    assert root.orchestration_requests == requests + 3
    assert [m.name for m in broker.messages] == [ORCHESTRATE]  # one for three
    broker.deliver_all()
    root = root_row(wf)
    assert root.orchestrations == passes + 1
    assert root.orchestration_queued_at is None
    tasks = Workflow.get(wf.id).tasks
    assert [t.result for t in tasks if t.kind is None] == [{"arch": k} for k in "abc"]
    assert [t.key for t in tasks if t.kind == "callback"] == ["a", "b", "c"]
    assert Workflow.get(wf.id).status == "success"
    consistent(wf)


def test_populate_that_is_not_idempotent_fails_loudly(app, db, monkeypatch):
    monkeypatch.setattr(Unsteady, "calls", 0)
    wf = Workflow.create("unsteady").start()
    wf = Workflow.get(wf.id)
    assert wf.status == "failure"
    (populate,) = wf.tasks
    assert populate.error.startswith("PopulateNotIdempotentError: populate() of ")
    assert "second call changed 1 node(s)" in populate.error
    assert "PopulateNotIdempotentError" in wf.message
    consistent(wf)


def test_the_check_is_a_test_setting(app, db, monkeypatch):
    monkeypatch.setitem(app.config, "WTFLOW_CHECK_POPULATE", False)
    monkeypatch.setattr(Unsteady, "calls", 0)
    wf = Workflow.create("unsteady").start()
    wf = Workflow.get(wf.id)
    assert wf.status == "success"  # nothing checked: its second node just runs
    assert [t.key for t in wf.tasks] == [None, "call-1", "call-2"]


def test_a_failing_callback_fails_the_run_and_restarts_like_a_task(
    app, db, monkeypatch
):
    wf = Workflow.create("bad-callback").start()
    wf = Workflow.get(wf.id)
    by = nodes(wf)
    assert wf.status == "failure"
    assert by["explode"].error == "ValueError: no comparison today"
    assert "Traceback" in by["explode"].model.traceback
    assert by["after"].status == "cancelled"
    consistent(wf)

    monkeypatch.setattr(BadCallback, "explode", lambda self, ctx: "fine now")
    Task.get(by["explode"].id).restart()
    wf = Workflow.get(wf.id)
    by = nodes(wf)
    assert (by["explode"].result, by["after"].result) == ("fine now", 4)
    assert by["explode"].attempt == 2
    assert wf.status == "success"
    consistent(wf)


def test_restart_reuses_the_nodes_populate_declared(app, db):
    wf = Workflow.create("regression", data={"architectures": ["x86", "arm"]})
    wf.start()
    ids = [t.id for t in Workflow.get(wf.id).tasks]
    Workflow.get(wf.id).restart()
    wf = Workflow.get(wf.id)
    assert wf.status == "success"
    assert [t.id for t in wf.tasks] == ids
    assert all(t.attempt == 2 for t in wf.tasks if t.kind is None)
    consistent(wf)


def test_stop_cancels_what_waits_for_the_orchestrator(app, db, broker):
    wf = Workflow.create("regression", data={"architectures": ["x86"]}).start()
    Workflow.get(wf.id).stop()
    wf = Workflow.get(wf.id)
    assert wf.status == "cancelled"
    assert nodes(wf)["populate"].status == "cancelled"
    broker.deliver_all()  # the pass finds nothing to do
    assert Workflow.get(wf.id).status == "cancelled"
    assert root_row(wf).orchestration_queued_at is None
    consistent(wf)


def test_the_sweeper_publishes_a_lost_pass_again(app, db, broker):
    wf = Workflow.create("regression", data={"architectures": ["x86"]}).start()
    broker.messages.clear()  # the broker lost it
    assert dispatch.requeue_stale() == 0  # not stale yet
    root = root_row(wf)
    root.orchestration_queued_at = utcnow() - timedelta(hours=1)
    populate = _db.session.get(TaskRun, nodes(wf)["populate"].id)
    populate.queued_at = root.orchestration_queued_at  # it has no message
    _db.session.commit()
    assert dispatch.requeue_stale() == 1
    assert [m.name for m in broker.messages] == [ORCHESTRATE]
    broker.deliver_all()
    assert Workflow.get(wf.id).status == "success"
    consistent(wf)


@pytest.mark.skipif(
    not os.environ.get("SQLALCHEMY_DATABASE_URI", "").startswith("postgresql"),
    reason="row locks are PostgreSQL's; SQLite serialises writers",
)
def test_the_sweeper_takes_no_root_while_it_holds_tasks(app, clean, broker):
    wf = Workflow.create("regression", data={"architectures": ["x86"]}).start()
    broker.deliver(is_pass)
    assert nodes(wf)["x86"].status == "queued"
    root = root_row(wf)
    long_ago = utcnow() - timedelta(hours=1)
    root.orchestration_queued_at = long_ago
    _db.session.get(TaskRun, nodes(wf)["x86"].id).queued_at = long_ago
    _db.session.commit()
    task_id, root_id = nodes(wf)["x86"].id, root.id
    swept = queue.Queue()

    def sweep():
        with app.app_context():
            try:
                swept.put(dispatch.requeue_stale())
            except Exception as exc:  # pragma: no cover - the failure reported
                swept.put(exc)

    with _db.engine.connect() as stop:  # holds the root, then wants the task
        stop.execute(
            text("SELECT id FROM wtflow_workflow WHERE id = :id FOR UPDATE"),
            {"id": root_id},
        )
        sweeper = threading.Thread(target=sweep)
        sweeper.start()
        deadline = time.monotonic() + 10
        while not stop.execute(text(WAITING_FOR_A_LOCK)).scalar():
            assert time.monotonic() < deadline, "the sweeper never reached the root"
            time.sleep(0.02)
        # Before, the sweeper held the task while it waited for the root:
        # PostgreSQL found a deadlock here and aborted one of the two.
        stop.execute(text("SET LOCAL lock_timeout = '5s'"))
        stop.execute(
            text("SELECT id FROM wtflow_task WHERE id = :id FOR UPDATE"),
            {"id": task_id},
        )
        stop.rollback()
    sweeper.join(10)
    assert swept.get(timeout=1) == 2  # the task's attempt and the pass


WAITING_FOR_A_LOCK = "SELECT count(*) FROM pg_locks WHERE NOT granted"
"""Whether a transaction waits for a lock (``pg_locks`` is read live, not
from the transaction's snapshot of statistics as ``pg_stat_activity`` is)."""


def test_a_pass_waits_for_its_tree_to_go_quiet(app, db, broker, monkeypatch):
    monkeypatch.setitem(app.config, "WTFLOW_ORCHESTRATION_DELAY", 0.3)
    wf = Workflow.create("regression", data={"architectures": ["x86"]}).start()
    broker.deliver(is_pass)  # asked for just now: it waits
    (later,) = broker.messages
    assert is_pass(later) and 0 < later.options["countdown"] <= 0.3
    assert root_row(wf).orchestrations == 0
    time.sleep(0.3)
    broker.deliver(is_pass)
    assert root_row(wf).orchestrations == 1
    assert nodes(wf)["x86"].status == "queued"


def test_a_pass_waits_no_longer_than_the_limit(app, db, monkeypatch):
    monkeypatch.setitem(app.config, "WTFLOW_ORCHESTRATION_DELAY", 5)
    monkeypatch.setitem(app.config, "WTFLOW_ORCHESTRATION_MAX_DELAY", 2)
    root = WorkflowRun(name="regression", data={}, status="running")
    root.root_id = root.id = uuid.uuid4()
    root.orchestration_requested_at = utcnow()
    root.orchestration_queued_at = utcnow() - timedelta(seconds=1.5)
    _db.session.add(root)
    _db.session.commit()
    assert 0.4 < dynamic.postpone(root.id) <= 0.5  # what is left of the limit
    root = _db.session.get(WorkflowRun, root.id)
    root.orchestration_queued_at = utcnow() - timedelta(seconds=2)
    _db.session.commit()
    assert dynamic.postpone(root.id) is None


def test_a_pass_for_a_run_that_is_gone_does_nothing(app, db):
    assert orchestrate.apply(args=("5c0ffee0-0000-4000-8000-000000000000",)).get() == 0


def test_the_checker_sees_a_queued_node_no_pass_was_asked_for(app, db, broker):
    wf = Workflow.create("regression", data={"architectures": ["x86"]}).start()
    root = root_row(wf)
    root.orchestration_queued_at = None
    _db.session.commit()
    assert check_workflow(wf.id) == [
        "task populate (node 0): is queued but no orchestrator pass is asked for"
    ]


def test_the_checker_sees_a_node_left_running_outside_a_pass(app, db):
    wf = Workflow.create("regression", data={"architectures": ["x86"]}).start()
    populate = _db.session.get(TaskRun, nodes(wf)["populate"].id)
    populate.status = "running"
    _db.session.commit()
    problems = check_workflow(wf.id)
    assert "task populate (node 0): is running outside an orchestrator pass" in (
        problems
    )


def test_a_dynamic_child_is_orchestrated_by_its_root(app, db):
    wf = Workflow.create("regression-inside").start()
    wf = Workflow.get(wf.id)
    assert wf.status == "success"
    (child,) = wf.children()[0]
    assert child.name == "regression"
    assert wf.result == {"compare": {"builds": 1}}
    child_row = _db.session.get(WorkflowRun, child.id)
    assert child_row.orchestrations == 0 and child_row.orchestration_requests == 0
    assert root_row(wf).orchestrations >= 2
    consistent(wf, child)


@pytest.mark.parametrize(
    "populate, error, message",
    [
        (
            lambda self, ctx: ctx.add(add, data=[1, 2]),
            InvalidDataError,
            "Node data must be a JSON object (dict), not list.",
        ),
        (
            lambda self, ctx: ctx.add(add, data={"x": object()}),
            InvalidDataError,
            "Node data must be JSON-serialisable",
        ),
        (
            lambda self, ctx: ctx.add(len),
            InvalidDefinitionError,
            "is neither a workflow task nor a registered workflow definition",
        ),
        (
            lambda self, ctx: ctx.add("invenio_wtflow.tasks.requeue_stale"),
            InvalidDefinitionError,
            "is not a workflow task: declare it with @workflow_task",
        ),
        (
            lambda self, ctx: ctx.add_callback("nope"),
            InvalidDefinitionError,
            "RegressionAnalysis has no callback method 'nope'",
        ),
        (
            lambda self, ctx: ctx.add_callback("restart"),
            InvalidDefinitionError,
            "has no callback method 'restart' (a callback is a public method",
        ),
        (
            lambda self, ctx: ctx.add(add, data={"x": 1, "y": 1}, key=""),
            InvalidDataError,
            "key must be a non-empty string.",
        ),
        (
            lambda self, ctx: ctx.update_data(x=1),
            InvalidDefinitionError,
            "populate() must be idempotent: it cannot change the run's data.",
        ),
        (
            lambda self, ctx: ctx.add(
                add, data={"x": 1, "y": 1}, after=dynamic.NodeRef("ghost", "0" * 64)
            ),
            InvalidDefinitionError,
            "declare a node before the nodes that depend on it",
        ),
    ],
)
def test_bad_declarations_fail_populate_with_a_clear_error(
    app, db, monkeypatch, populate, error, message
):
    monkeypatch.setattr(RegressionAnalysis, "populate", populate)
    wf = Workflow.create("regression", data={"architectures": []}).start()
    wf = Workflow.get(wf.id)
    (node,) = wf.tasks  # nothing was added
    assert wf.status == "failure"
    assert node.error.startswith(f"{error.__name__}: ")
    assert message in node.error
    consistent(wf)


def test_a_key_names_one_node_forever(app, db, monkeypatch):
    wf = Workflow.create("regression", data={"architectures": ["x86"]}).start()

    def populate(self, ctx):
        ctx.add("tests.example_tasks.build", data={"arch": "other"}, key="x86")

    monkeypatch.setattr(RegressionAnalysis, "populate", populate)
    Task.get(nodes(wf)["populate"].id).restart()
    node = nodes(wf)["populate"]
    assert node.status == "failure"
    assert node.error.startswith("NodeConflictError: Node tests.example_tasks.build ")
    assert "a key must always name the same node" in node.error
    consistent(wf)


def test_identity_is_what_a_node_runs_and_its_data(app, db, broker, monkeypatch):
    same = {"video_id": 1, "quality": "hd"}

    def populate(self, ctx):
        ctx.add("transcode-one", data=same)
        ctx.add("video", data=same)  # another definition, the same data
        ctx.add("transcode-one", data={**same, "quality": "sd"})
        ctx.add("tests.example_tasks.transcode_one", data=same)  # a task

    monkeypatch.setattr(RegressionAnalysis, "populate", populate)
    wf = Workflow.create("regression", data={"architectures": []}).start()
    broker.deliver(is_pass)
    added = [t for t in Workflow.get(wf.id).tasks if t.kind is None]
    assert [(t.name, t.model.signature["args"]) for t in added] == [
        ("invenio_wtflow.subworkflow", ["transcode-one"]),
        ("invenio_wtflow.subworkflow", ["video"]),
        ("invenio_wtflow.subworkflow", ["transcode-one"]),
        ("tests.example_tasks.transcode_one", []),
    ]
    assert len({t.model.node_key for t in added}) == 4
    consistent(wf)


def test_a_node_that_ran_gains_no_new_dependencies(app, db, monkeypatch):
    wf = Workflow.create("regression", data={"architectures": ["x86"]}).start()

    def populate(self, ctx):
        extra = ctx.add(add, data={"x": 1, "y": 1}, key="late")
        ctx.add(
            "tests.example_tasks.build", data={"arch": "x86"}, key="x86", after=extra
        )

    monkeypatch.setattr(RegressionAnalysis, "populate", populate)
    Task.get(nodes(wf)["populate"].id).restart()
    node = nodes(wf)["populate"]
    assert node.status == "failure"
    assert "is success; it cannot gain new dependencies any more" in node.error
    assert "late" not in nodes(wf)  # the failed call's nodes were rolled back
    consistent(wf)


def test_a_pending_node_gains_dependencies_named_later(app, db, broker):
    wf = Workflow.create("regression", data={"architectures": ["x86"]}).start()
    broker.deliver(is_pass)
    compare = nodes(wf)["compare"]
    assert compare.model.remaining == 1
    _db.session.expire_all()
    wf_row = _db.session.get(WorkflowRun, wf.id)
    wf_row.data = {"architectures": ["x86", "arm"]}
    _db.session.commit()
    orchestrator.atomic(
        lambda uow: dynamic.repopulate(uow, orchestrator.lock_workflow(wf.id))
    )
    broker.deliver(is_pass)
    compare = nodes(wf)["compare"]
    assert compare.model.remaining == 2
    assert len(Workflow.get(wf.id).dependencies()[compare.id]) == 2
    broker.deliver_all()
    assert Workflow.get(wf.id).status == "success"
    assert nodes(wf)["compare"].result == {"builds": 2}
    consistent(wf)


def test_a_pass_that_never_settles_stops_at_its_budget(app, db, monkeypatch):
    monkeypatch.setitem(app.config, "WTFLOW_ORCHESTRATION_STEPS", 5)
    counter = iter(range(100))

    def populate(self, ctx):
        ctx.add_callback("compare", key="first")

    def compare(self, ctx):
        ctx.add_callback("compare", key=f"again-{next(counter)}")

    monkeypatch.setattr(RegressionAnalysis, "populate", populate)
    monkeypatch.setattr(RegressionAnalysis, "compare", compare)
    monkeypatch.setitem(app.config, "WTFLOW_CHECK_POPULATE", False)
    wf = Workflow.create("regression", data={"architectures": []}).start()
    wf = Workflow.get(wf.id)
    assert wf.status == "failure"
    failed = [t for t in wf.tasks if t.status == "failure"]
    assert failed and failed[0].error.startswith(
        "OrchestrationError: the orchestrator ran 5 steps in one pass"
    )
    consistent(wf)


def test_a_node_after_a_failed_one_is_cancelled_when_declared(app, db, monkeypatch):
    def populate(self, ctx):
        first = ctx.add(boom, key="boom")
        ctx.add(add, data={"x": 1, "y": 1}, key="then", after=first)

    monkeypatch.setattr(RegressionAnalysis, "populate", populate)
    wf = Workflow.create("regression", data={"architectures": []}).start()
    wf = Workflow.get(wf.id)
    by = nodes(wf)
    assert (by["boom"].status, by["then"].status) == ("failure", "cancelled")
    assert wf.status == "failure"
    consistent(wf)


def test_a_finished_callback_restarts_and_runs_again(app, db):
    wf = Workflow.create("regression", data={"architectures": ["x86"]}).start()
    compare = nodes(wf)["compare"]
    with pytest.raises(InvalidStateError):
        Workflow.get(wf.id).stop()  # nothing left to stop
    Task.get(compare.id).restart()
    wf = Workflow.get(wf.id)
    assert wf.status == "success"
    by = nodes(wf)
    assert (by["compare"].attempt, by["x86"].attempt) == (2, 1)
    consistent(wf)


#
# Coalescing, with real transactions (threads)
#
@pytest.mark.skipif(
    not ON_POSTGRESQL,
    reason="lock waits are queued in order on PostgreSQL; SQLite polls",
)
@pytest.mark.parametrize("repeat", range(3))
def test_fifty_completions_during_a_slow_pass_lead_to_one_or_two_more(
    app, clean, broker, monkeypatch, repeat
):
    items = [f"i{n:02d}" for n in range(50)]
    wf = Workflow.create("slow-populate", data={"items": items}).start()
    broker.deliver(is_pass)
    builds = []
    for task in Workflow.get(wf.id).tasks:
        if task.kind is None:
            model = task.model
            assert orchestrator.atomic(orchestrator.claim, model.id, model.celery_id)
            builds.append((model.id, model.celery_id, model.signature["kwargs"]))
    passes = root_row(wf).orchestrations
    # Quiet for longer than one completion takes on a loaded machine.
    monkeypatch.setitem(app.config, "WTFLOW_ORCHESTRATION_DELAY", 0.3)
    monkeypatch.setitem(app.config, "WTFLOW_ORCHESTRATION_MAX_DELAY", 10)
    published = queue.Queue()
    monkeypatch.setattr(dispatch, "_send", lambda m: published.put(m) or True)
    entered, release, stop = threading.Event(), threading.Event(), threading.Event()
    SlowPopulate.gate = lambda: (entered.set(), release.wait(30))
    errors = []

    def in_app(target, *args):
        def run():
            with app.app_context():
                try:
                    target(*args)
                except Exception as exc:  # pragma: no cover - reported below
                    errors.append(exc)
                finally:
                    _db.session.remove()

        return threading.Thread(target=run)

    def worker():
        """Run each pass when it is due, as a worker would."""
        while not (stop.is_set() and published.empty()):
            try:
                message = published.get(timeout=0.05)
            except queue.Empty:
                continue
            time.sleep(message.options.get("countdown", 0))
            orchestrate(*message.args)

    def slow_pass():
        orchestrator.atomic(
            lambda uow: dynamic.repopulate(uow, orchestrator.lock_workflow(wf.id))
        )
        published.get_nowait()  # run here, not by the worker
        orchestrator.atomic(dynamic.orchestrate, wf.id)

    first = in_app(slow_pass)
    first.start()
    assert entered.wait(10)
    SlowPopulate.gate = None  # only the pass already running is slow
    finishers = [
        in_app(orchestrator.atomic, orchestrator.succeed, id_, celery_id, kwargs)
        for id_, celery_id, kwargs in builds
    ]
    for thread in finishers:
        thread.start()
    time.sleep(1)  # they all wait for the root lock
    deliverer = in_app(worker)
    deliverer.start()
    release.set()
    for thread in [first, *finishers]:
        thread.join(60)
    stop.set()
    deliverer.join(60)
    assert not errors
    root = root_row(wf)
    follow_ups = root.orchestrations - passes - 1
    assert 1 <= follow_ups <= 2
    assert root.orchestration_requests >= passes + 50
    assert root.orchestration_queued_at is None
    wf = Workflow.get(wf.id)
    notes = [t for t in wf.tasks if t.kind == "callback"]
    assert sorted(t.key for t in notes) == items  # the graph reflects all 50
    assert {t.status for t in notes} == {"success"}
    assert wf.status == "success"
    consistent(wf)
