# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Delegated tasks over HTTP: ``POST /workflows/<id>/tasks/<task_id>/complete``.

One test (or parameter) per behaviour of the issue, through the Flask test
client, with no user logged in: the token is the credential. A refused
completion must leave the task row, its history, its delegations, its run and
the outbox (what is published or revoked after the commit) as they were.
"""

import base64
import json
import logging
import threading
import uuid
from datetime import timedelta

import pytest
from flask_security.utils import hash_password
from invenio_db import db as _db
from sqlalchemy.exc import OperationalError
from sqlalchemy_continuum import version_class

from invenio_wtflow import Workflow
from invenio_wtflow.api import Task
from invenio_wtflow.engine import delegation, dispatch, orchestrator
from invenio_wtflow.engine.check import check_workflow
from invenio_wtflow.models import TaskDelegation, TaskRun, WorkflowRun, utcnow

from .example_tasks import FARM_HOOKS

DONE = {"status": "success", "result": {"file": "video-1.mp4"}}
"""A completion body the farm sends when it is done."""

DENIED = {"status": 403, "message": "Invalid or expired token."}
"""The one answer every refused token gets."""


class Outbox:
    """What the engine sends after its commits: kept messages and revocations."""

    def __init__(self, broker):
        """Watch a :class:`~tests.conftest.ManualBroker`."""
        self.broker = broker
        self.revoked = []

    def state(self):
        """The messages waiting to be delivered and the attempts revoked."""
        return (
            [(m.task_run_id, m.celery_id) for m in self.broker.messages],
            list(self.revoked),
        )


@pytest.fixture()
def outbox(broker, monkeypatch):
    """Keep published messages (delivered on demand) and record revocations."""
    box = Outbox(broker)
    monkeypatch.setattr(dispatch, "revoke", box.revoked.extend)
    return box


def delegated(broker, farm, **data):
    """Start a "farm" run and let its first task delegate; return it and its job."""
    wf = Workflow.create("farm", data={"video_id": 1, "timeout": 600, **data}).start()
    broker.deliver()
    task = Workflow.get(wf.id).tasks[0]
    assert task.status == "waiting", (task.status, task.error)
    return wf, task, farm[-1]


def post(client, job, body=DONE, token=None, url=None, headers=None):
    """Post a completion with the job's token (or the one given)."""
    headers = (
        {"Authorization": f"Bearer {token or job['token']}"}
        if headers is None
        else headers
    )
    return client.post(url or job["url"], json=body, headers=headers)


def _columns(row):
    return {c.name: getattr(row, c.name) for c in row.__table__.columns}


def snapshot(task_id):
    """The task row, its versions and delegations, and its run's row and versions."""
    _db.session.rollback()
    _db.session.expire_all()
    task = _db.session.get(TaskRun, task_id)
    run = _db.session.get(WorkflowRun, task.workflow_id)
    task_versions, run_versions = version_class(TaskRun), version_class(WorkflowRun)
    return {
        "task": _columns(task),
        "task versions": [
            _columns(v)
            for v in task_versions.query.filter_by(id=task_id).order_by(
                task_versions.transaction_id
            )
        ],
        "delegations": [
            _columns(d)
            for d in TaskDelegation.query.filter_by(task_id=task_id).order_by(
                TaskDelegation.attempt
            )
        ],
        "run": _columns(run),
        "run versions": [
            _columns(v)
            for v in run_versions.query.filter_by(id=run.id).order_by(
                run_versions.transaction_id
            )
        ],
    }


def statuses(task_id):
    """The task's recorded statuses, oldest first."""
    return [h["status"] for h in Task.get(task_id).history()]


def move_deadline(task_id, seconds):
    """Move the deadline of a task's current delegation by ``seconds``."""
    task = _db.session.get(TaskRun, task_id)
    record = _db.session.get(TaskDelegation, (task.id, task.attempt))
    record.deadline = utcnow() + timedelta(seconds=seconds)
    _db.session.commit()


#
# The happy paths
#
def test_a_delegated_task_waits_without_a_worker_and_completes(
    app, db, client, farm, outbox
):
    wf, task, job = delegated(outbox.broker, farm)
    assert outbox.state() == ([], [])  # nothing runs while it waits
    assert Workflow.get(wf.id).status == "waiting"
    assert task.model.lease_expires_at is None  # no worker holds it
    assert task.result is None  # the ticket is not the result
    assert task.message.startswith("Waiting for an external system until ")
    assert job["url"] == (
        f"http://localhost/workflows/{wf.id}/tasks/{task.id}/complete"
    )
    detail = client.get(f"/workflows/{wf.id}/tasks/{task.id}")
    assert detail.status_code == 401  # reading still needs a login

    res = post(client, job)
    assert res.status_code == 200, res.json
    assert res.json["status"] == "success"
    assert res.json["result"] == DONE["result"]
    assert res.json["message"] == "Completed by the external system."
    assert res.json["deadline"] == job["deadline"]
    assert statuses(task.id) == ["pending", "queued", "running", "waiting", "success"]
    assert len(outbox.broker.messages) == 1  # the next task, queued once

    outbox.broker.deliver_all()
    wf = Workflow.get(wf.id)
    assert wf.status == "success"
    assert wf.result == {"video_id": 1, "published": DONE["result"]}
    assert check_workflow(wf.id) == []


def test_a_failure_report_fails_the_task_and_cancels_what_follows(
    app, db, client, farm, outbox
):
    wf, task, job = delegated(outbox.broker, farm)
    body = {"status": "failure", "result": {"log": "codec"}, "message": "no codec"}
    res = post(client, job, body)
    assert res.status_code == 200
    assert res.json["status"] == "failure"
    assert res.json["error"] == "DelegatedTaskError: no codec"
    assert res.json["message"] == "no codec"
    assert res.json["result"] == {"log": "codec"}
    wf = Workflow.get(wf.id)
    assert [t.status for t in wf.tasks] == ["failure", "cancelled"]
    assert wf.status == "failure" and "no codec" in wf.message
    assert outbox.state() == ([], [])
    assert check_workflow(wf.id) == []


def test_the_token_is_random_shown_once_and_stored_as_a_hash(
    app, db, client, farm, outbox
):
    wf, task, job = delegated(outbox.broker, farm)
    _, _, other = delegated(outbox.broker, farm)
    token = job["token"]
    assert len(base64.urlsafe_b64decode(token + "=")) == 32  # 256 random bits
    assert token != other["token"]
    stored = json.dumps(snapshot(task.id), default=str)
    assert token not in stored
    assert delegation.hash_token(token) in stored
    post(client, job)
    stored = json.dumps(snapshot(task.id), default=str)
    assert token not in stored
    assert token not in json.dumps(client.get(job["url"]).json)  # 405, no echo


#
# Refused completions change nothing
#
def _other_task(broker, farm):
    """The job of a task of another run."""
    return delegated(broker, farm)[2]


REFUSALS = {
    # One character changed (a token that starts with "x" stays different).
    "wrong token": lambda job, other: {
        "token": ("y" if job["token"].startswith("x") else "x") + job["token"][1:]
    },
    "another task's token": lambda job, other: {"token": other["token"]},
    "unknown task": lambda job, other: {
        "url": job["url"].replace(job["task_id"], str(uuid.uuid4()))
    },
    "unknown run": lambda job, other: {
        "url": job["url"].replace(job["url"].split("/")[4], str(uuid.uuid4()))
    },
    "task of another run": lambda job, other: {
        "url": other["url"].replace(other["task_id"], job["task_id"])
    },
    "malformed task id": lambda job, other: {
        "url": job["url"].replace(job["task_id"], "not-a-uuid")
    },
}
"""How a completion gets a 403: what is changed in a genuine one."""


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_a_refused_token_gets_403_and_changes_nothing(
    app, db, client, farm, outbox, caplog, case
):
    _, task, job = delegated(outbox.broker, farm)
    other = _other_task(outbox.broker, farm)
    before, sent = snapshot(task.id), outbox.state()
    with caplog.at_level(logging.WARNING, logger=delegation.__name__):
        res = post(client, job, **REFUSALS[case](job, other))
    assert res.status_code == 403
    assert res.json == DENIED  # the same whether or not the task exists
    assert "WWW-Authenticate" not in res.headers
    assert snapshot(task.id) == before and outbox.state() == sent
    assert "Rejected a completion of task" in caplog.text
    assert job["token"] not in caplog.text and other["token"] not in caplog.text
    assert post(client, job).status_code == 200  # the genuine one still works


def test_an_expired_token_gets_403_and_changes_nothing(
    app, db, client, farm, outbox, caplog
):
    _, task, job = delegated(outbox.broker, farm)
    move_deadline(task.id, -1)
    before, sent = snapshot(task.id), outbox.state()
    with caplog.at_level(logging.WARNING, logger=delegation.__name__):
        res = post(client, job)
    assert (res.status_code, res.json) == (403, DENIED)
    assert snapshot(task.id) == before and outbox.state() == sent
    assert "token expired" in caplog.text


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer  "}],
    ids=["no header", "another scheme", "empty token"],
)
def test_a_missing_token_gets_401_and_changes_nothing(
    app, db, client, farm, outbox, headers
):
    _, task, job = delegated(outbox.broker, farm)
    before, sent = snapshot(task.id), outbox.state()
    res = post(client, job, headers=headers)
    assert res.status_code == 401 and res.json["status"] == 401
    assert res.headers["WWW-Authenticate"] == "Bearer"
    assert snapshot(task.id) == before and outbox.state() == sent


@pytest.mark.parametrize(
    "body, content_type, status, field",
    [
        ("{}", "application/json", 400, "status"),
        ('{"status": "done"}', "application/json", 400, "status"),
        ('{"status": "success", "colour": 1}', "application/json", 400, "colour"),
        ('{"status": "success", "result": NaN}', "application/json", 400, "result"),
        ('{"status": "failure", "message": 3}', "application/json", 400, "message"),
        ('["success"]', "application/json", 400, None),
        ("{not json", "application/json", 400, None),
        ('{"status": "success"}', "text/plain", 415, None),
    ],
)
def test_a_bad_body_gets_400_naming_the_field_and_changes_nothing(
    app, db, client, farm, outbox, body, content_type, status, field
):
    _, task, job = delegated(outbox.broker, farm)
    before, sent = snapshot(task.id), outbox.state()
    res = client.post(
        job["url"],
        data=body,
        content_type=content_type,
        headers={"Authorization": f"Bearer {job['token']}"},
    )
    assert res.status_code == status and res.json["status"] == status
    if field:
        assert [e["field"] for e in res.json["errors"]] == [field]
    assert snapshot(task.id) == before and outbox.state() == sent


#
# Restart, replay, stop, deadline
#
def test_an_earlier_attempts_token_is_a_conflict_after_a_restart(
    app, db, client, farm, outbox
):
    wf, task, first = delegated(outbox.broker, farm)
    Task.get(task.id).restart()
    outbox.broker.deliver()
    second = farm[-1]
    assert (first["attempt"], second["attempt"]) == (1, 2)
    assert Task.get(task.id).status == "waiting"
    before, sent = snapshot(task.id), outbox.state()
    res = post(client, first)
    assert res.status_code == 409
    assert "belongs to attempt 1" in res.json["message"]
    assert snapshot(task.id) == before and outbox.state() == sent

    res = post(client, second)
    assert res.status_code == 200 and res.json["attempt"] == 2
    assert res.json["status"] == "success"
    assert post(client, first).status_code == 409  # still, once it is done
    assert check_workflow(wf.id) == []


def test_replaying_a_completion_changes_nothing(app, db, client, farm, outbox):
    _, task, job = delegated(outbox.broker, farm)
    first = post(client, job)
    assert first.status_code == 200
    before, sent = snapshot(task.id), outbox.state()
    again = post(client, job)
    assert again.status_code == 200
    assert again.json == first.json  # the current state, the same
    assert snapshot(task.id) == before and outbox.state() == sent
    assert statuses(task.id).count("success") == 1
    same_meaning = {**DONE, "message": None}  # the defaults, spelt out
    assert post(client, job, same_meaning).status_code == 200
    assert snapshot(task.id) == before


@pytest.mark.parametrize(
    "body",
    [
        {**DONE, "result": {"file": "other.mp4"}},
        {**DONE, "message": "done twice"},
        {"status": "failure", "result": DONE["result"]},
    ],
    ids=["other result", "other message", "other status"],
)
def test_another_body_after_the_task_finished_is_a_conflict(
    app, db, client, farm, outbox, body
):
    _, task, job = delegated(outbox.broker, farm)
    assert post(client, job).status_code == 200
    before, sent = snapshot(task.id), outbox.state()
    res = post(client, job, body)
    assert res.status_code == 409
    assert "completed already (success) with another body" in res.json["message"]
    assert snapshot(task.id) == before and outbox.state() == sent


def test_a_completion_for_a_stopped_workflow_is_a_conflict(
    app, db, client, farm, outbox
):
    wf, task, job = delegated(outbox.broker, farm)
    Workflow.get(wf.id).stop()
    assert Task.get(task.id).status == "cancelled"
    before, sent = snapshot(task.id), outbox.state()
    res = post(client, job)
    assert res.status_code == 409 and "was cancelled" in res.json["message"]
    assert snapshot(task.id) == before and outbox.state() == sent
    assert Task.get(task.id).status == "cancelled"


def test_a_passed_deadline_times_the_task_out_and_a_later_completion_conflicts(
    app, db, client, farm, outbox
):
    wf, task, job = delegated(outbox.broker, farm)
    assert dispatch.requeue_stale(older_than=3600) == 0  # not due yet
    move_deadline(task.id, -1)
    assert dispatch.requeue_stale(older_than=3600) == 1
    task = Task.get(task.id)
    assert task.status == "failure"
    assert task.error.startswith("Timeout: no completion arrived before the deadline")
    assert task.message == "Timed out waiting for the external system."
    wf = Workflow.get(wf.id)
    assert [t.status for t in wf.tasks] == ["failure", "cancelled"]
    assert wf.status == "failure"
    assert dispatch.requeue_stale(older_than=3600) == 0  # once

    before, sent = snapshot(task.id), outbox.state()
    res = post(client, job)
    assert res.status_code == 409 and "timed out" in res.json["message"]
    assert snapshot(task.id) == before and outbox.state() == sent
    assert check_workflow(wf.id) == []


#
# Early completion, retried transactions, who may complete
#
def test_a_completion_before_the_worker_committed_waiting_is_applied_once(
    app, db, client, farm, outbox
):
    answers = []

    def answer_at_once(job):  # the farm calls back before the body returns
        assert Task.get(job["task_id"]).status == "running"
        answers.append(post(client, job))

    FARM_HOOKS.append(answer_at_once)
    wf = Workflow.create("farm", data={"video_id": 1}).start()
    outbox.broker.deliver()  # runs the body; the hook completes it meanwhile
    (res,) = answers
    assert res.status_code == 200 and res.json["status"] == "success"
    task = Workflow.get(wf.id).tasks[0]
    assert task.status == "success" and task.result == DONE["result"]
    # The body's return found the task finished and changed nothing.
    assert statuses(task.id) == ["pending", "queued", "running", "success"]
    assert len(outbox.broker.messages) == 1
    assert post(client, farm[-1]).status_code == 200  # a replay, still
    outbox.broker.deliver_all()
    assert Workflow.get(wf.id).status == "success"
    assert check_workflow(wf.id) == []


def test_a_transient_database_error_is_retried_on_the_server(
    app, db, client, farm, outbox, monkeypatch
):
    _, task, job = delegated(outbox.broker, farm)
    lock, failures = orchestrator.lock_workflow, []

    def flaky_lock(*args, **kwargs):
        if not failures:
            failures.append(1)
            raise OperationalError("SELECT", {}, Exception("deadlock detected"))
        return lock(*args, **kwargs)

    monkeypatch.setattr(orchestrator, "lock_workflow", flaky_lock)
    res = post(client, job)
    assert failures and res.status_code == 200
    assert res.json["status"] == "success"
    assert statuses(task.id).count("success") == 1
    assert len(outbox.broker.messages) == 1


def test_no_login_is_needed_and_a_login_is_no_token(app, db, client, farm, outbox):
    from .helpers import PASSWORD, login

    user = app.extensions["security"].datastore.create_user(
        email="someone@example.org", password=hash_password(PASSWORD), active=True
    )
    db.session.commit()
    _, _, job = delegated(outbox.broker, farm)
    login(client, user)  # a user with no permission on the run
    assert post(client, job, headers={}).status_code == 401
    assert post(client, job).status_code == 200


def test_tokens_are_compared_in_constant_time(app, db, client, farm, outbox):
    """Every comparison goes through hmac.compare_digest, for a task or none."""
    _, _, job = delegated(outbox.broker, farm)
    compared = []
    real = delegation.hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return real(a, b)

    delegation.hmac.compare_digest = spy
    try:
        post(client, job, token="wrong")
        unknown = job["url"].replace(job["task_id"], str(uuid.uuid4()))
        post(client, job, token="wrong", url=unknown)
    finally:
        delegation.hmac.compare_digest = real
    wrong = delegation.hash_token("wrong")
    assert [b for _, b in compared] == [wrong, wrong]
    assert compared[1][0] == delegation._DECOY  # no task: compared all the same


#
# Concurrent replays (real commits: each thread has its own connection)
#
def complete_at_once(app, job, threads=8):
    """Post the same completion from ``threads`` clients at once; return the answers.

    Each thread has its own client, and each request its own application
    context, so each has its own database connection.
    """
    barrier = threading.Barrier(threads)
    answers, errors = [], []

    def replay():
        try:
            with app.test_client() as client:
                barrier.wait(timeout=30)
                answers.append(post(client, job))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
            barrier.abort()

    running = [threading.Thread(target=replay) for _ in range(threads)]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join()
    assert not errors, errors
    _db.session.rollback()
    return answers


def test_eight_concurrent_replays_make_one_transition(app, clean, farm, broker):
    _, task, job = delegated(broker, farm)
    answers = complete_at_once(app, job)
    assert [a.status_code for a in answers] == [200] * 8
    assert {a.json["status"] for a in answers} == {"success"}
    assert statuses(task.id).count("success") == 1
    assert len(broker.messages) == 1  # the next task, queued once
    assert check_workflow(task.workflow_id) == []
