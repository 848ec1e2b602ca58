# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""The sweeper and the claims a database crash may have forgotten."""

from datetime import timedelta

import pytest
from invenio_db import db as _db

from invenio_wtflow import Workflow
from invenio_wtflow.engine import dispatch
from invenio_wtflow.models import TaskRun


@pytest.fixture()
def lost_publish(app, db, monkeypatch):
    """A run whose first attempt is ``queued``, its message never sent."""
    sent = []
    monkeypatch.setattr(dispatch, "_send", lambda message: True)
    wf = Workflow.create("add-chain", start=True)
    monkeypatch.setattr(dispatch, "_send", lambda message: sent.append(message))
    return wf.tasks[0].model, sent


def database_started():
    """When PostgreSQL started, as the sweeper reads it."""
    return dispatch._claims_forgotten_before()


def queued_before_the_start(task, started):
    """Move the attempt's ``queued_at`` to just before the database started."""
    task.queued_at = started - timedelta(seconds=1)
    _db.session.commit()


@pytest.fixture()
def queued_before_a_crash(lost_publish, app, monkeypatch):
    """Unflushed claims, and the attempt queued before PostgreSQL started."""
    if _db.engine.dialect.name != "postgresql":
        pytest.skip("claims commit unflushed on PostgreSQL only")
    task, sent = lost_publish
    monkeypatch.setitem(app.config, "WTFLOW_CLAIM_SYNCHRONOUS_COMMIT", False)
    started = database_started()
    queued_before_the_start(task, started)
    return task, sent, started


def test_an_attempt_queued_before_a_crash_waits_for_its_lease(
    queued_before_a_crash, app, monkeypatch
):
    """Unflushed claims: an attempt queued before the database's start may
    be running under a claim the crash forgot. The sweeper publishes it
    again only once its lease would have ended after that start."""
    task, sent, started = queued_before_a_crash
    lease = (dispatch.utcnow() - started).total_seconds() + 3600
    monkeypatch.setitem(app.config, "WTFLOW_TASK_LEASE", lease)
    assert dispatch.requeue_stale(older_than=0) == 0 and sent == []
    assert _db.session.get(TaskRun, task.id).queued_at < started  # untouched
    monkeypatch.setitem(app.config, "WTFLOW_TASK_LEASE", 1)  # it has ended
    assert dispatch.requeue_stale(older_than=0) == 1
    assert [m.celery_id for m in sent] == [task.celery_id]


def test_with_flushed_claims_a_crash_makes_no_attempt_wait(
    lost_publish, app, monkeypatch
):
    """By default a claim is flushed before its body runs: a crash forgets
    none, and an attempt queued before the database's start is published
    again after ``WTFLOW_REQUEUE_AFTER``, as any other. So is one queued
    after the start with unflushed claims."""
    task, sent = lost_publish
    monkeypatch.setitem(app.config, "WTFLOW_TASK_LEASE", 10**9)
    assert database_started() is None
    if _db.engine.dialect.name == "postgresql":
        monkeypatch.setitem(app.config, "WTFLOW_CLAIM_SYNCHRONOUS_COMMIT", False)
        started = database_started()
        monkeypatch.setitem(app.config, "WTFLOW_CLAIM_SYNCHRONOUS_COMMIT", True)
        queued_before_the_start(task, started)
    assert dispatch.requeue_stale(older_than=0) == 1
    if _db.engine.dialect.name != "postgresql":
        return
    monkeypatch.setitem(app.config, "WTFLOW_CLAIM_SYNCHRONOUS_COMMIT", False)
    assert _db.session.get(TaskRun, task.id).queued_at > started  # moved to now
    assert dispatch.requeue_stale(older_than=0) == 1
    assert [m.celery_id for m in sent] == [task.celery_id] * 2


def test_a_tasks_own_lease_decides_how_long_it_waits(
    queued_before_a_crash, app, monkeypatch
):
    """``@workflow_task(lease=...)`` is the lease the attempt would have had."""
    task, _, _ = queued_before_a_crash
    own = app.extensions["flask-celeryext"].celery.tasks[task.name]
    monkeypatch.setitem(app.config, "WTFLOW_TASK_LEASE", 1)
    monkeypatch.setattr(own, "lease", 10**9, raising=False)
    assert dispatch.requeue_stale(older_than=0) == 0
    monkeypatch.setattr(own, "lease", 1)
    assert dispatch.requeue_stale(older_than=0) == 1
