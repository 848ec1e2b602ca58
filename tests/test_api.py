# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""The Python API in eager mode, as Invenio sites test."""

import copy
import uuid

import pytest
from celery import chain, group
from sqlalchemy_continuum import version_class

from invenio_wtflow import Workflow, current_wtflow
from invenio_wtflow.api import Task
from invenio_wtflow.engine import dispatch, orchestrator
from invenio_wtflow.errors import (
    InvalidDataError,
    InvalidDefinitionError,
    InvalidStateError,
    TaskNotFoundError,
    UnknownWorkflowError,
    WorkflowNotFoundError,
)
from invenio_wtflow.models import TaskDependency, TaskRun, WorkflowRun

from .example_tasks import (
    add,
    always_retrying,
    fact,
    on_video_queue,
    record,
    twice,
    write_mark,
)


def statuses(wf):
    """Return the statuses of a run's tasks in graph order."""
    return [t.status for t in Workflow.get(wf.id).tasks]


def count_rows(db):
    """Return the number of workflow and task rows."""
    return WorkflowRun.query.count(), TaskRun.query.count()


def test_create_writes_every_task_pending_before_anything_runs(app, db):
    wf = Workflow.create("video", data={"video_id": 1})
    assert wf.status == "pending"
    assert [t.name.rsplit(".", 1)[-1] for t in wf.tasks] == [
        "extract_metadata",
        "extract_frames",
        "transcode",
        "publish",
    ]
    assert statuses(wf) == ["pending"] * 4
    assert TaskDependency.query.count() == 3
    assert type(wf).__name__ == "VideoProcessing"


def test_video_workflow_runs_end_to_end(app, db):
    wf = Workflow.create("video", data={"video_id": 1})
    wf.start(video_id=7)
    assert wf.status == "success"
    assert wf.data == {"video_id": 7}
    tasks = wf.tasks
    assert tasks[0].result == {"video_id": 7, "duration": 42}
    assert tasks[0].message == "probing"
    assert tasks[2].result == {
        "video_id": 7,
        "quality": "720p",
        "seen": 2,
        "duration": 42,
    }
    assert wf.result == "published 7"
    assert [t.attempt for t in tasks] == [1, 1, 1, 1]


def test_results_follow_celery_semantics(app, db):
    assert Workflow.create("add-chain").start().result == 60
    assert Workflow.create("fan-out").start().result == 20


def test_idempotent_create_with_key(app, db):
    first = Workflow.create("add-chain", key="deposit-1")
    again = Workflow.create("add-chain", data={"other": 1}, key="deposit-1")
    assert again.id == first.id
    assert count_rows(db) == (1, 3)
    assert Workflow.create("add-chain", key="deposit-2").id != first.id


def test_create_and_start_is_one_transaction(app, db, monkeypatch):
    sent = []
    monkeypatch.setattr(dispatch, "_send", sent.append)
    commits = []
    monkeypatch.setattr(
        db.session, "commit", lambda real=db.session.commit: commits.append(real())
    )
    wf = Workflow.create("add-chain", data={}, start=True)
    assert len(commits) == 1
    assert statuses(wf) == ["queued", "pending", "pending"]
    assert [m.celery_id for m in sent] == [wf.tasks[0].model.celery_id]
    # Never seen pending: its first version is already running.
    assert [h["status"] for h in wf.history()] == ["running"]
    assert wf.model.started_at is not None

    # With a known key: the existing run, not started again.
    keyed = Workflow.create("add-chain", key="k", start=True)
    again = Workflow.create("add-chain", key="k", start=True)
    assert (again.id, again.created_now) == (keyed.id, False)
    assert len(sent) == 2


def test_create_and_start_waits_for_a_slot_under_max_runs(app, db, monkeypatch):
    monkeypatch.setattr(dispatch, "_send", lambda message: None)
    first = Workflow.create("two-at-a-time", data={"seconds": 0}, start=True)
    second = Workflow.create("two-at-a-time", data={"seconds": 0}, start=True)
    third = Workflow.create("two-at-a-time", data={"seconds": 0}, start=True)
    assert [Workflow.get(w.id).status for w in (first, second, third)] == [
        "running",
        "running",
        "pending",
    ]
    assert Workflow.get(third.id).model.slot_requested_at is not None


def test_the_id_of_a_new_run_is_known_without_reading_it_again(app, db, monkeypatch):
    from .test_engine_orchestrator import count_statements

    monkeypatch.setattr(dispatch, "_send", lambda message: True)
    wf = Workflow.create("add-chain", start=True)
    with count_statements(db) as statements:
        workflow_id = wf.id
    assert statements == []
    assert Workflow.get(workflow_id).name == "add-chain"


def test_a_run_created_at_once_joins_the_session_after_its_publish(
    app, db, monkeypatch
):
    """One statement inserts it; the session learns of it only when it is used."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("created by one statement on PostgreSQL only")
    known_at_publish = []
    monkeypatch.setattr(
        dispatch,
        "_send",
        lambda message: known_at_publish.append(len(db.session.identity_map)),
    )
    wf = Workflow.create("add-chain", start=True)
    assert known_at_publish == [0]
    assert len(db.session.identity_map) == 0
    found = Workflow.get(wf.id)  # read first by another route: one row, one object
    assert wf.model is found.model
    assert (wf.status, wf.name) == ("running", "add-chain")

    # Used first through the run itself: read from the database, not taken
    # from the values the creation computed.
    other = Workflow.create("add-chain", start=True)
    db.session.execute(
        WorkflowRun.__table__.update()
        .where(WorkflowRun.id == other.id)
        .values(message="changed")
    )
    assert (other.message, other.status) == ("changed", "running")
    assert other.model is Workflow.get(other.id).model

    # A copy made before the first use reads the run in its own session.
    third = Workflow.create("add-chain", start=True)
    twin = copy.copy(third)
    assert third.status == "running"
    db.session.expunge_all()  # as a session that ended
    assert (twin.status, twin.model is not third.model) == ("running", True)


def test_a_new_run_has_a_first_version_of_every_task(app, db, monkeypatch):
    """Tasks and their first versions are inserted in bulk, not by the ORM."""
    monkeypatch.setattr(dispatch, "_send", lambda message: None)
    wf = Workflow.create("add-chain")
    created = wf.history()
    assert [(h["status"], h["operation"]) for h in created] == [("pending", 0)]
    for task in wf.tasks:
        [first] = task.history()
        assert first["operation"] == 0  # INSERT
        assert first["transaction_id"] == created[0]["transaction_id"]
        assert (first["status"], first["attempt"], first["retries"]) == (
            "pending",
            0,
            0,
        )
    version = version_class(TaskRun)
    row = db.session.query(version).filter_by(id=wf.tasks[0].id).one()
    task = wf.tasks[0].model
    for column in ("workflow_id", "position", "name", "signature", "created"):
        assert getattr(row, column) == getattr(task, column)

    # Created already started (a spawned child): a ready task's first
    # version is queued, and its attempt is published after the commit.
    graph = current_wtflow.get_workflow_class("add-chain").compile()
    sent = []
    monkeypatch.setattr(dispatch, "_send", sent.append)
    model, _ = orchestrator.atomic(
        orchestrator.create, "add-chain", graph, {}, start=True
    )
    started = Workflow.get(model.id)
    statuses = [[h["status"] for h in t.history()] for t in started.tasks]
    assert statuses == [["queued"], ["pending"], ["pending"]]
    assert [m.celery_id for m in sent] == [started.tasks[0].model.celery_id]
    assert started.status == "running"


def test_history_records_every_status_change(app, db):
    wf = Workflow.create("add-chain").start()
    assert [h["status"] for h in wf.tasks[0].history()] == [
        "pending",
        "queued",
        "running",
        "success",
    ]
    assert [h["status"] for h in wf.history()][0] == "pending"
    assert wf.history()[-1]["status"] == "success"
    video = Workflow.create("video", data={"video_id": 1}).start()
    messages = [h["message"] for h in video.tasks[0].history()]
    assert "probing" in messages


def test_failure_cancels_downstream_and_fails_the_workflow(app, db):
    wf = Workflow.create("failing").start()
    assert wf.status == "failure"
    assert statuses(wf) == [
        "success",
        "failure",
        "cancelled",
        "cancelled",
        "cancelled",
    ]
    failed = wf.tasks[1]
    assert failed.error == "ValueError: boom"
    assert "Traceback" in failed.model.traceback
    assert "boom" in wf.message
    assert all("upstream task" in t.message for t in wf.tasks[2:])


def test_celery_retry_is_recorded_and_succeeds(app, db, tmp_path):
    wf = Workflow.create("flaky", data={"counter_file": str(tmp_path / "c")})
    wf.start()
    assert wf.status == "success"
    flaky = wf.tasks[0]
    assert flaky.result == 2
    assert flaky.model.retries == 1
    assert flaky.attempt == 1
    assert "queued" in [h["status"] for h in flaky.history()][2:]


def test_restart_task_reruns_it_and_downstream_only(app, db, tmp_path):
    current_wtflow.register(
        "marks",
        chain(record.si(name="a"), record.si(name="b"), record.si(name="c")),
    )
    wf = Workflow.create("marks", data={"marker_dir": str(tmp_path)}).start()
    assert wf.status == "success"
    Task.get(wf.tasks[1].id).restart()
    wf = Workflow.get(wf.id)
    assert wf.status == "success"
    assert [(tmp_path / n).read_text() for n in "abc"] == ["x", "xx", "xx"]
    assert [t.attempt for t in wf.tasks] == [1, 2, 2]


def test_restart_workflow_keeps_id_and_merges_data(app, db, tmp_path):
    wf = Workflow.create("video", data={"video_id": 1, "keep": True}).start()
    wf.restart(video_id=2)
    again = Workflow.get(wf.id)
    assert again.id == wf.id and again.status == "success"
    assert again.data == {"video_id": 2, "keep": True}
    assert again.result == "published 2"
    assert [t.attempt for t in again.tasks] == [2, 2, 2, 2]
    assert WorkflowRun.query.count() == 1


def test_restart_of_failed_task_after_fix(app, db):
    wf = Workflow.create("failing").start()
    with pytest.raises(InvalidStateError, match="failed; restart it instead"):
        Task.get(wf.tasks[2].id).restart()
    assert statuses(wf)[2] == "cancelled"


def test_stop_cancels_everything_unfinished(app, db, monkeypatch):
    sent = []
    monkeypatch.setattr(dispatch, "_send", sent.append)
    wf = Workflow.create("add-chain").start()
    assert statuses(wf) == ["queued", "pending", "pending"]
    stale = sent[0]
    wf.stop()
    assert wf.status == "cancelled"
    assert statuses(wf) == ["cancelled"] * 3
    versions = len(wf.tasks[0].history())
    monkeypatch.undo()
    dispatch.publish([stale])  # a late delivery of the revoked attempt
    assert statuses(wf) == ["cancelled"] * 3
    assert len(Workflow.get(wf.id).tasks[0].history()) == versions


def test_duplicate_and_stale_deliveries_are_ignored(app, db, tmp_path):
    current_wtflow.register("one-mark", record.si(name="m"))
    wf = Workflow.create("one-mark", data={"marker_dir": str(tmp_path)}).start()
    task = wf.tasks[0]
    first = dispatch.Message.for_task(task.model)
    dispatch.publish([first])  # the same message delivered twice
    assert (tmp_path / "m").read_text() == "x"
    Task.get(task.id).restart()
    assert (tmp_path / "m").read_text() == "xx"
    versions = len(Task.get(task.id).history())
    dispatch.publish([first])  # an old attempt's message after a restart
    assert (tmp_path / "m").read_text() == "xx"
    assert len(Task.get(task.id).history()) == versions
    assert Task.get(task.id).attempt == 2


def test_sweeper_publishes_what_a_crash_left_queued(app, db, monkeypatch):
    monkeypatch.setattr(dispatch, "_send", lambda message: None)  # lost publish
    wf = Workflow.create("add-chain").start()
    assert statuses(wf) == ["queued", "pending", "pending"]
    monkeypatch.undo()
    assert dispatch.requeue_stale(older_than=3600) == 0
    assert dispatch.requeue_stale(older_than=0) == 1
    assert Workflow.get(wf.id).status == "success"
    assert Workflow.get(wf.id).result == 60


def test_plain_calls_write_nothing(app, db):
    assert add(1, 2) == 3
    assert add.delay(2, 3).get() == 5
    assert chain(add.s(1, 1), add.s(1)).apply_async().get() == 3
    assert count_rows(db) == (0, 0)


def test_custom_status_rule(app, db):
    class Lenient(Workflow):
        definition = chain(add.si(1, 1), add.si(2, 2))

        def compute_status(self, counts):
            return "success" if counts.get("success") else "pending"

    current_wtflow.register("lenient", Lenient)
    wf = Workflow.create("lenient")
    Task.get(wf.tasks[0].id)
    wf.start()
    assert isinstance(wf, Lenient) and wf.status == "success"


def test_a_run_with_its_own_status_rule_created_at_once_reads_its_row(app, db):
    """Its creation computed ~30 values; the run reads them, and later ones, from the row."""

    class OwnRule(Workflow):
        definition = chain(add.si(1, 1), add.s(2))

        def compute_status(self, counts):
            return "success" if counts.get("success") == 2 else "running"

    current_wtflow.register("own-rule-at-once", OwnRule)
    wf = Workflow.create("own-rule-at-once", start=True)  # eager: finished already
    assert isinstance(wf, OwnRule)
    assert (wf.status, wf.result) == ("success", 4)
    assert wf.model.finished_at is not None


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda: Workflow.create("nope"), UnknownWorkflowError),
        (lambda: Workflow.create("add-chain", data={"x": object()}), InvalidDataError),
        (lambda: Workflow.create("add-chain", data=[1]), InvalidDataError),
        (lambda: Workflow.create("add-chain", key=""), InvalidDataError),
        (lambda: Workflow.get(uuid.uuid4()), WorkflowNotFoundError),
        (lambda: Workflow.get("not-a-uuid"), WorkflowNotFoundError),
        (lambda: Task.get(uuid.uuid4()), TaskNotFoundError),
    ],
)
def test_bad_input_raises_and_writes_nothing(app, db, call, error):
    with pytest.raises(error):
        call()
    assert count_rows(db) == (0, 0)


def test_invalid_definition_is_rejected(app, db):
    current_wtflow.register("broken", {"not": "a canvas"})
    current_wtflow.register("missing", "tests.example_tasks:nothing_here")
    for name in ("broken", "missing"):
        with pytest.raises(InvalidDefinitionError):
            Workflow.create(name)
    assert count_rows(db) == (0, 0)


def test_start_twice_is_an_error(app, db):
    wf = Workflow.create("add-chain").start()
    before = len(wf.history())
    with pytest.raises(InvalidStateError, match="only a pending run"):
        wf.start()
    assert len(Workflow.get(wf.id).history()) == before


def test_stop_and_restart_where_they_make_no_sense(app, db):
    wf = Workflow.create("add-chain").start()
    with pytest.raises(InvalidStateError, match="nothing to stop"):
        wf.stop()
    with pytest.raises(InvalidStateError, match="nothing to stop"):
        Task.get(wf.tasks[0].id).stop()
    pending = Workflow.create("add-chain")
    with pytest.raises(InvalidStateError, match="not run yet"):
        Task.get(pending.tasks[0].id).restart()
    assert Workflow.get(wf.id).status == "success"


def test_eager_retries_and_exhausted_autoretry(app, db, tmp_path):
    current_wtflow.register(
        "retrying", group(twice.si(), always_retrying.si(), add.si(1, 1))
    )
    wf = Workflow.create("retrying", data={"counter_file": str(tmp_path / "c")})
    wf.start()  # nothing escapes the engine, even with eager propagation on
    assert statuses(wf) == ["success", "failure", "success"]
    assert wf.tasks[0].result == 3 and wf.tasks[0].model.retries == 2
    assert "still broken" in wf.tasks[1].error


def test_a_step_may_call_its_task_directly(app, db):
    current_wtflow.register("fact", fact.si(5))
    assert Workflow.create("fact").start().result == 120


def test_task_routing_options_are_used(app, db, monkeypatch):
    from celery import current_app as celery

    sent = []
    monkeypatch.setattr(celery.conf, "task_always_eager", False)
    monkeypatch.setattr(celery, "send_task", lambda name, **kw: sent.append(kw))
    current_wtflow.register("routed", on_video_queue.si())
    Workflow.create("routed").start()
    assert sent[0]["queue"] == "video"


def test_body_writes_survive_a_retried_success_transaction(app, db, monkeypatch):
    from sqlalchemy.exc import OperationalError

    from invenio_wtflow.engine import fused, orchestrator

    db.session.execute(db.text("CREATE TABLE IF NOT EXISTS marks (name TEXT)"))
    db.session.commit()
    failures = []

    def flaky(func, success):
        def fails_once(*args, **kwargs):
            if success(kwargs) and not failures:
                failures.append(1)
                raise OperationalError("SELECT", {}, Exception("connection dropped"))
            return func(*args, **kwargs)

        return fails_once

    # The success's lock names the task, or the run's root (see the claim);
    # on PostgreSQL, a root run's success is sent with its lock.
    lock = flaky(
        orchestrator.lock_workflow, lambda k: k.get("task_id") or k.get("root_id")
    )
    monkeypatch.setattr(orchestrator, "lock_workflow", lock)
    monkeypatch.setattr(fused, "finish", flaky(fused.finish, lambda k: True))
    current_wtflow.register("writes", write_mark.si("one"))
    wf = Workflow.create("writes").start()
    assert failures and Workflow.get(wf.id).status == "success"
    assert db.session.execute(db.text("SELECT name FROM marks")).all() == [("one",)]


def test_a_transient_error_after_the_claim_retries_the_reads_only(
    app, clean, broker, monkeypatch
):
    """On PostgreSQL the claim is committed as its statement ends: retrying it
    would find the attempt claimed already and drop the delivery."""
    from sqlalchemy.exc import OperationalError

    from invenio_wtflow.engine import orchestrator

    inputs, failures = orchestrator.inputs, []

    def flaky_inputs(task):
        if not failures:
            failures.append(task.id)
            raise OperationalError("SELECT", {}, Exception("connection dropped"))
        return inputs(task)

    monkeypatch.setattr(orchestrator, "inputs", flaky_inputs)
    wf = Workflow.create("add-chain", start=True)
    broker.deliver_all()
    assert failures and Workflow.get(wf.id).status == "success"
    assert Workflow.get(wf.id).result == 60


def test_arguments_that_cannot_be_read_fail_the_task(app, clean, broker, monkeypatch):
    from invenio_wtflow.engine import orchestrator

    def broken_inputs(task):
        raise ValueError("no such result")

    monkeypatch.setattr(orchestrator, "inputs", broken_inputs)
    wf = Workflow.create("add-chain", start=True)
    broker.deliver_all()
    wf = Workflow.get(wf.id)
    assert wf.status == "failure"
    failed = [t for t in wf.tasks if t.status == "failure"]
    assert [t.error for t in failed] == ["ValueError: no such result"]


def test_the_decorated_task_is_a_usable_celery_task(app, db):
    assert add.apply(args=(2, 2)).get() == 4
    assert add.s(1, 1).apply().get() == 2
    assert (chain(add.s(1, 1)) | add.s(1)).apply().get() == 3
    assert count_rows(db) == (0, 0)
