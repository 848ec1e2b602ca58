# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Orchestrator transitions: cost per task and the status rule."""

from contextlib import contextmanager

import pytest
from celery import chord
from sqlalchemy import event

from invenio_wtflow import Workflow, current_wtflow
from invenio_wtflow.engine import dispatch, orchestrator
from invenio_wtflow.engine.status import default_status
from invenio_wtflow.tasks import requeue_stale

from .example_tasks import add, tsum


@contextmanager
def count_statements(db):
    """Count the SQL statements sent to the database."""
    statements = []

    def record(conn, cursor, statement, *args):
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(db.engine, "before_cursor_execute", record)


def hot_path_cost(db, monkeypatch, width):
    """Statements to claim and complete the first and the last group member."""
    current_wtflow.register(
        f"width-{width}", chord([add.s(i, i) for i in range(width)], tsum.s())
    )
    monkeypatch.setattr(dispatch, "_send", lambda message: None)
    wf = Workflow.create(f"width-{width}").start()
    members = [(t.id, t.model.celery_id) for t in wf.tasks[:-1]]

    def claim_and_succeed(task_id, celery_id):
        orchestrator.atomic(orchestrator.claim, task_id, celery_id)
        orchestrator.atomic(orchestrator.succeed, task_id, celery_id, 1)

    with count_statements(db) as first:
        claim_and_succeed(*members[0])
    for member in members[1:-1]:
        claim_and_succeed(*member)
    with count_statements(db) as last:  # fires the join
        claim_and_succeed(*members[-1])
    assert Workflow.get(wf.id).tasks[-1].status == "queued"
    # Savepoints come from the test's outer transaction: not counted.
    return [len([s for s in c if "SAVEPOINT" not in s]) for c in (first, last)]


def test_statements_per_task_do_not_grow_with_the_workflow(app, db, monkeypatch):
    small = hot_path_cost(db, monkeypatch, 10)
    large = hot_path_cost(db, monkeypatch, 200)
    assert small == large
    # claim: lock, update, Continuum (transaction, version, close previous: 3);
    # success: lock root and task (3), update + Continuum (4), counter, status;
    # the join: lock it, update, Continuum's version and close-previous.
    assert small == [16, 21]


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
