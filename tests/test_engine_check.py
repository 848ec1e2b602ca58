# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""The consistency checker finds what breaks the invariants."""

import pytest
from celery import current_app as current_celery_app

from invenio_wtflow import Workflow
from invenio_wtflow.cli import wtflow
from invenio_wtflow.engine import dispatch
from invenio_wtflow.engine.check import check_workflow
from invenio_wtflow.errors import WorkflowNotFoundError
from invenio_wtflow.models import TaskRun, WorkflowRun


def corrupt(db, model, id_, **values):
    """Write values behind the engine's back."""
    db.session.query(model).filter_by(id=id_).update(values)
    db.session.commit()


@pytest.mark.parametrize("name", ["add-chain", "fan-out", "failing", "video"])
def test_runs_the_engine_leaves_are_consistent(app, db, name):
    wf = Workflow.create(name, data={"video_id": 1})
    assert check_workflow(wf.id) == []
    wf.start()
    assert check_workflow(wf.id) == []
    wf.restart()
    assert check_workflow(wf.id) == []


def test_finds_a_wrong_join_counter(app, db):
    wf = Workflow.create("fan-out")
    corrupt(db, TaskRun, wf.tasks[-1].id, remaining=4)
    assert check_workflow(wf.id) == [
        f"task {wf.tasks[-1].name} (node 5): join counter is 4 but 5 "
        "dependencies are unfinished"
    ]


def test_finds_a_task_run_before_its_upstream(app, db):
    wf = Workflow.create("add-chain")
    corrupt(db, TaskRun, wf.tasks[1].id, status="success")
    problems = check_workflow(wf.id)
    assert any("node 1" in p and "did not succeed" in p for p in problems)
    assert any("workflow status is pending" in p for p in problems)


def test_finds_a_live_task_below_a_failure(app, db):
    wf = Workflow.create("failing").start()
    corrupt(db, TaskRun, wf.tasks[4].id, status="pending")
    assert any("downstream of failed node 1" in p for p in check_workflow(wf.id))


def test_finds_a_finished_run_with_active_tasks(app, db):
    wf = Workflow.create("add-chain")
    corrupt(db, WorkflowRun, wf.id, status="success")
    assert "workflow status is success, its tasks say pending" in check_workflow(wf.id)


def test_unknown_run(app, db):
    import uuid

    with pytest.raises(WorkflowNotFoundError):
        check_workflow(uuid.uuid4())


def test_cli_check(app, db):
    runner = app.test_cli_runner()
    wf = Workflow.create("add-chain").start()
    res = runner.invoke(wtflow, ["check", str(wf.id)])
    assert res.exit_code == 0 and "consistent" in res.output
    corrupt(db, WorkflowRun, wf.id, status="running")
    res = runner.invoke(wtflow, ["check", str(wf.id), "--json"])
    assert res.exit_code == 1
    assert "its tasks say success" in res.output


def waiting_parent(monkeypatch):
    """A run whose first task waits on two spawned children, still queued."""
    sent = []
    monkeypatch.setattr(dispatch, "_send", lambda m: sent.append(m) or True)
    wf = Workflow.create(
        "transcode-all", data={"video_id": 1, "qualities": ["a", "b"]}
    ).start()
    message = sent.pop(0)
    current_celery_app.tasks[message.name].apply(
        task_id=message.celery_id,
        headers={dispatch.HEADER: message.task_run_id},
        throw=False,
    )
    wf = Workflow.get(wf.id)
    assert wf.tasks[0].status == "waiting"
    return wf


def test_a_waiting_join_is_consistent_and_a_wrong_counter_is_found(
    app, db, monkeypatch
):
    wf = waiting_parent(monkeypatch)
    assert check_workflow(wf.id) == []
    corrupt(db, TaskRun, wf.tasks[0].id, remaining=1)
    assert check_workflow(wf.id) == [
        f"task {wf.tasks[0].name} (node 0): join counter is 1 but 2 joined "
        "children are unfinished"
    ]


def test_finds_a_join_that_never_fired(app, db, monkeypatch):
    wf = waiting_parent(monkeypatch)
    for child in wf.children()[0]:
        corrupt(db, WorkflowRun, child.id, status="success")
    corrupt(db, TaskRun, wf.tasks[0].id, remaining=0)
    assert check_workflow(wf.id) == [
        f"task {wf.tasks[0].name} (node 0): is still waiting although every "
        "joined child has finished"
    ]


def test_finds_a_child_running_under_a_cancelled_task(app, db, monkeypatch):
    wf = waiting_parent(monkeypatch)
    corrupt(db, TaskRun, wf.tasks[0].id, status="cancelled")
    problems = check_workflow(wf.id)
    assert any(
        "is cancelled but child" in p and "unfinished tasks" in p for p in problems
    )
