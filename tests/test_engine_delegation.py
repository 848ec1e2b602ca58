# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Delegated tasks in the engine and the Python API (HTTP: test_views_delegation)."""

from datetime import timedelta

import pytest
from celery import chord
from celery import current_app as current_celery_app
from flask import Flask

from invenio_wtflow import Workflow, current_wtflow
from invenio_wtflow.api import Task, completion_url, delegate_attempt
from invenio_wtflow.engine import delegation, dispatch, orchestrator
from invenio_wtflow.engine.check import check_workflow
from invenio_wtflow.errors import (
    CompletionConflictError,
    InvalidDataError,
    InvalidStateError,
    InvalidTokenError,
    MissingTokenError,
)
from invenio_wtflow.models import TaskDelegation, TaskRun, utcnow

from .example_tasks import FARM, FARM_HOOKS, send_to_farm, tsum
from .test_engine_orchestrator import claimed_run, count_statements, expire_lease
from .test_views_delegation import delegated, move_deadline


#
# The ticket
#
def test_the_ticket_keeps_its_token_out_of_its_repr(app):
    ticket = delegation.Ticket(
        url="http://x/complete",
        token="s3cret",
        deadline=utcnow(),
        task_id="t",
        attempt=1,
    )
    assert "s3cret" not in repr(ticket)
    assert "http://x/complete" in repr(ticket)


def test_the_ticket_reaches_neither_the_result_nor_celerys_backend(app, db, broker):
    Workflow.create("farm", data={"video_id": 1}).start()
    (message,) = broker.messages
    outcome = current_celery_app.tasks[message.name].apply(
        args=(),
        kwargs={},
        task_id=message.celery_id,
        headers={dispatch.HEADER: message.task_run_id},
        throw=False,
    )
    assert outcome.result is None
    task = Task.get(message.task_run_id)
    assert task.status == "waiting" and task.result is None


def test_delegate_outside_a_workflow_is_an_error(app, db):
    with pytest.raises(RuntimeError, match="not running as part of a workflow"):
        send_to_farm.apply(args=(1,))


@pytest.mark.parametrize("timeout", [0, -5, "10", True, timedelta(0)])
def test_a_timeout_must_be_a_positive_duration(app, timeout):
    with pytest.raises(ValueError, match="positive duration"):
        delegate_attempt(None, timeout)


def test_a_bad_timeout_fails_the_task(app, db, farm):
    wf = Workflow.create("farm", data={"video_id": 1, "timeout": -1}).start()
    task = Workflow.get(wf.id).tasks[0]
    assert task.status == "failure" and task.error.startswith("ValueError")
    assert TaskDelegation.query.count() == 0


def test_the_default_timeout_comes_from_the_configuration(app, db, farm):
    app.config["WTFLOW_DELEGATE_TIMEOUT"] = 120
    try:
        before = utcnow()
        wf = Workflow.create("farm", data={"video_id": 1}).start()
    finally:
        app.config["WTFLOW_DELEGATE_TIMEOUT"] = 24 * 3600
    task = Workflow.get(wf.id).tasks[0]
    deadline = task.deadline
    assert before + timedelta(seconds=120) <= deadline <= utcnow() + timedelta(120)
    assert farm[-1]["deadline"] == deadline.isoformat()


def test_the_completion_url_comes_from_the_configuration(app):
    ids = ("w", "t")
    assert completion_url(*ids) == "http://localhost/workflows/w/tasks/t/complete"
    app.config["SITE_API_URL"] = "https://example.org/api/"
    try:
        assert completion_url(*ids) == (
            "https://example.org/api/workflows/w/tasks/t/complete"
        )
        app.config["WTFLOW_API_URL"] = "https://api.example.org/wf/"
        assert completion_url(*ids) == "https://api.example.org/wf/w/tasks/t/complete"
    finally:
        del app.config["SITE_API_URL"]
        app.config["WTFLOW_API_URL"] = None
    bare = Flask("without-the-blueprint")  # as Invenio's Celery app may be
    bare.config["WTFLOW_URL_PREFIX"] = "/workflows"
    with bare.test_request_context():
        with pytest.raises(RuntimeError, match="set WTFLOW_API_URL"):
            completion_url(*ids)


#
# Python API
#
def test_task_complete_applies_once(app, db, broker, farm):
    _, task, job = delegated(broker, farm)
    done = Task.get(task.id).complete(job["token"], "success", {"n": 1}, "made")
    assert (done.status, done.result, done.message) == ("success", {"n": 1}, "made")
    versions = len(done.history())
    again = Task.get(task.id).complete(job["token"], "success", {"n": 1}, "made")
    assert again.status == "success" and len(again.history()) == versions
    with pytest.raises(CompletionConflictError, match="with another body"):
        Task.get(task.id).complete(job["token"], "success", {"n": 2}, "made")
    assert len(broker.messages) == 1


@pytest.mark.parametrize(
    "token, status, result, error",
    [
        (None, "success", None, MissingTokenError),
        ("", "success", None, MissingTokenError),
        ("wrong", "success", None, InvalidTokenError),
        ("job", "done", None, InvalidDataError),
        ("job", "success", {1j}, InvalidDataError),
        ("job", "success", float("nan"), InvalidDataError),
    ],
)
def test_task_complete_raises_clear_errors(
    app, db, broker, farm, token, status, result, error
):
    _, task, job = delegated(broker, farm)
    with pytest.raises(error):
        Task.get(task.id).complete(
            job["token"] if token == "job" else token, status, result
        )
    assert Task.get(task.id).status == "waiting"


def test_the_messages_of_refusals_say_nothing_of_the_task(app, db, broker, farm):
    _, task, job = delegated(broker, farm)
    with pytest.raises(InvalidTokenError) as wrong:
        Task.get(task.id).complete("wrong", "success", None)
    assert str(wrong.value) == "Invalid or expired token."
    assert str(task.id) not in str(wrong.value)


#
# Tokens, attempts and the lease
#
def test_delegating_again_in_an_attempt_replaces_the_token(app, db, farm):
    wf = Workflow.create("delegate-twice").start()
    task = Workflow.get(wf.id).tasks[0]
    # The body returned its first ticket, which its second call had replaced.
    assert task.status == "failure" and task.error.startswith("InvalidTicket")
    first, second = farm
    assert first["attempt"] == second["attempt"] == 1
    with pytest.raises(InvalidTokenError):
        Task.get(task.id).complete(first["token"], "success", None)
    with pytest.raises(CompletionConflictError, match="is failure"):
        Task.get(task.id).complete(second["token"], "success", None)
    assert check_workflow(wf.id) == []


def test_a_stale_attempt_can_neither_delegate_nor_wait(app, db, monkeypatch):
    wf, task_id = claimed_run(monkeypatch)
    celery_id = Task.get(task_id).model.celery_id
    Workflow.get(wf.id).stop()
    with pytest.raises(InvalidStateError, match="no longer running; it cannot"):
        orchestrator.atomic(
            delegation.delegate, task_id, celery_id, 0, "0" * 64, utcnow()
        )
    ticket = delegation.Ticket("u", "t", utcnow(), str(task_id), 1)
    assert not orchestrator.atomic(delegation.wait, task_id, celery_id, 0, ticket)


def test_delegating_renews_the_lease_and_waiting_drops_it(app, db, broker, farm):
    leases = []
    FARM_HOOKS.append(
        lambda job: leases.append(Task.get(job["task_id"]).model.lease_expires_at)
    )
    _, task, _ = delegated(broker, farm)
    assert leases[0] > utcnow() + timedelta(seconds=500)  # WTFLOW_TASK_LEASE
    assert task.model.lease_expires_at is None


def test_a_lost_worker_after_delegating_runs_a_new_attempt(app, db, monkeypatch):
    wf, task_id = claimed_run(monkeypatch, name="farm")
    celery_id = Task.get(task_id).model.celery_id
    token = delegation.new_token()
    attempt = orchestrator.atomic(
        delegation.delegate,
        task_id,
        celery_id,
        0,
        delegation.hash_token(token),
        utcnow() + timedelta(hours=1),
    )
    assert attempt == 1
    expire_lease(db, task_id)
    monkeypatch.setattr(dispatch, "_send", lambda message: True)
    assert dispatch.requeue_stale(older_than=3600) == 1
    task = Task.get(task_id)
    assert (task.status, task.attempt) == ("queued", 2)
    with pytest.raises(CompletionConflictError, match="belongs to attempt 1"):
        task.complete(token, "success", None)
    assert check_workflow(wf.id) == []


def test_a_task_joining_children_takes_no_completion(app, db, broker, farm):
    wf = Workflow.create("delegate-then-join").start()
    broker.deliver(lambda m: m.name.endswith("delegate_then_join"))
    task = Workflow.get(wf.id).tasks[0]
    assert task.status == "waiting" and task.model.joined
    with pytest.raises(CompletionConflictError, match="waiting for child workflows"):
        task.complete(farm[-1]["token"], "success", None)
    move_deadline(task.id, -1)
    assert dispatch.requeue_stale(older_than=3600) == 0  # the join is not timed out
    broker.deliver_all()
    assert Workflow.get(wf.id).status == "success"
    assert check_workflow(wf.id) == []


#
# Cost
#
def completion_cost(db, broker, width):
    """Statements to complete one of ``width`` delegated members of a chord."""
    current_wtflow.register(
        f"farms-{width}",
        chord([send_to_farm.si(i, 600) for i in range(width)], tsum.s()),
    )
    wf = Workflow.create(f"farms-{width}").start()
    broker.deliver()
    task = Workflow.get(wf.id).tasks[0]
    (token,) = [job["token"] for job in FARM if job["task_id"] == str(task.id)]
    FARM.clear()
    with count_statements(db) as statements:
        task.complete(token, "success", 1)
    # Savepoints come from the test's outer transaction: not counted.
    return len([s for s in statements if "SAVEPOINT" not in s])


def test_a_completion_costs_the_same_for_10_and_100_siblings(app, db, broker, farm):
    assert completion_cost(db, broker, 10) == completion_cost(db, broker, 100)


def test_a_wrong_token_takes_one_read_and_no_lock(app, db, broker, farm):
    _, task, _ = delegated(broker, farm)
    with count_statements(db) as statements:
        with pytest.raises(InvalidTokenError):
            task.complete("wrong", "success", None)
    (read,) = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert "FOR UPDATE" not in read


#
# Consistency check
#
def test_the_check_finds_a_waiting_task_without_its_delegation(app, db, broker, farm):
    _, task, _ = delegated(broker, farm)
    assert check_workflow(task.workflow_id) == []
    TaskDelegation.query.filter_by(task_id=task.id).delete()
    db.session.commit()
    assert check_workflow(task.workflow_id) == [
        f"task {task.name} (node 0): is waiting without a delegation of attempt 1"
    ]


def test_the_check_finds_a_completion_that_did_not_finish_the_task(
    app, db, broker, farm
):
    _, task, _ = delegated(broker, farm)
    record = db.session.get(TaskDelegation, (task.id, 1))
    record.completed_at = utcnow()
    db.session.commit()
    assert check_workflow(task.workflow_id) == [
        f"task {task.name} (node 0): is still waiting although its completion "
        "was applied"
    ]
    db.session.query(TaskRun).filter_by(id=task.id).update({"status": "running"})
    db.session.commit()
    assert (
        f"task {task.name} (node 0): is running although the completion of "
        "attempt 1 was applied"
    ) in check_workflow(task.workflow_id)


def test_the_check_finds_a_delegation_ahead_of_its_task(app, db, broker, farm):
    _, task, _ = delegated(broker, farm)
    db.session.add(
        TaskDelegation(task_id=task.id, attempt=3, token_hash="x", deadline=utcnow())
    )
    db.session.commit()
    assert check_workflow(task.workflow_id) == [
        f"task {task.name} (node 0): has a delegation of attempt 3, beyond its "
        "attempt 1",
        f"task {task.name} (node 0): delegation of attempt 3 lacks a token hash "
        "or a deadline",
    ]
