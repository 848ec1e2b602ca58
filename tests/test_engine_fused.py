# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""PostgreSQL's one-statement transitions: the claim and the success."""

import pytest
from celery import chain
from invenio_db import db as _db
from sqlalchemy_continuum import version_class, versioning_manager

from invenio_wtflow import Workflow, current_wtflow
from invenio_wtflow.engine import dispatch, orchestrator, versioning
from invenio_wtflow.models import TaskDependency, TaskRun, WorkflowRun, utcnow
from invenio_wtflow.tasks import _claim

from .example_tasks import add, echo
from .test_engine_orchestrator import count_statements


@pytest.fixture()
def postgresql(db):
    """Skip off PostgreSQL: data-modifying ``WITH`` clauses are PostgreSQL's."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("one-statement transitions are PostgreSQL's")


@pytest.fixture()
def started(app, db, monkeypatch):
    """Start a run of ``bare | add(1) | add(2)``: a bare task, then a chain."""
    sent = []
    monkeypatch.setattr(dispatch, "_send", lambda m: sent.append(m) or True)
    current_wtflow.register("bare-chain", chain(echo, add.s(1), add.s(2)))
    wf = Workflow.create("bare-chain", data={"x": 5}, start=True)
    return wf, sent


def statements_of(db, func, *args):
    """Run ``func`` in its own transaction; return its result and statements."""
    with count_statements(db) as statements:
        result = orchestrator.atomic(func, *args)
    kept = [s for s in statements if "SAVEPOINT" not in s]
    return result, kept


def task_versions(db, task_id):
    """``(status, celery_id, transaction_id)`` of each version of a task."""
    model = version_class(TaskRun)
    return [
        (v.status, v.celery_id, v.transaction_id)
        for v in db.session.query(model)
        .filter_by(id=task_id)
        .order_by(model.transaction_id)
    ]


def test_a_claim_is_one_statement_that_reads_the_data_of_a_bare_task(
    postgresql, started, db
):
    wf, sent = started
    first = wf.tasks[0].model
    row, statements = statements_of(
        db, orchestrator.claim, first.id, first.celery_id, 0
    )
    assert len(statements) == 1
    assert (row.dependants, row.data, row.upstream) == (1, {"x": 5}, None)
    assert [v[0] for v in task_versions(db, first.id)] == ["queued", "running"]
    # The attempt is called with the data the claim read: no more statements.
    orchestrator.db.session.get(TaskRun, first.id).status = "queued"
    orchestrator.db.session.commit()
    execution, statements = statements_of(
        db, _claim, first.id, first.celery_id, 1, echo.run
    )
    assert execution.kwargs == {"x": 5} and len(statements) == 1


def test_a_success_queues_its_dependant_in_the_same_statement(postgresql, started, db):
    wf, sent = started
    first, second = (t.model for t in wf.tasks[:2])
    first_id, celery_id = first.id, first.celery_id
    row = orchestrator.atomic(orchestrator.claim, first_id, celery_id)
    sent.clear()
    with count_statements(db) as statements:
        assert orchestrator.record_success(first_id, celery_id, [], 0, row.dependants)
    # The root's lock, then the success with the dependant's update and
    # every version, in one statement.
    assert len([s for s in statements if "SAVEPOINT" not in s]) == 2
    [message] = sent
    db.session.expire_all()
    second = db.session.get(TaskRun, second.id)
    assert (second.status, second.attempt) == ("queued", 1)
    assert message.celery_id == second.celery_id
    assert (message.task_run_id, message.name) == (str(second.id), second.name)
    success = task_versions(db, first_id)[-1]
    queued = task_versions(db, second.id)[-1]
    assert success[0] == "success"
    assert queued == ("queued", second.celery_id, success[2])


def test_a_claim_reads_the_upstream_results_it_takes(postgresql, started, db):
    wf, sent = started
    first, second = (t.model for t in wf.tasks[:2])
    row = orchestrator.atomic(orchestrator.claim, first.id, first.celery_id)
    orchestrator.record_success(first.id, first.celery_id, 41, 0, row.dependants)
    second = db.session.get(TaskRun, second.id)
    execution, statements = statements_of(
        db, _claim, second.id, second.celery_id, 0, add.run
    )
    assert execution.args == (41, 1) and len(statements) == 1


def test_a_stale_claim_or_success_writes_nothing(postgresql, started, db):
    wf, _ = started
    first = wf.tasks[0].model
    transactions = versioning_manager.transaction_cls
    before = db.session.query(transactions).count()
    assert orchestrator.atomic(orchestrator.claim, first.id, "not-the-attempt") is None
    assert not orchestrator.record_success(first.id, first.celery_id, 1, 0, 1)
    assert not orchestrator.atomic(orchestrator.succeed, first.id, "other", 1)
    assert db.session.query(transactions).count() == before
    assert [v[0] for v in task_versions(db, first.id)] == ["queued"]


def test_the_success_that_finishes_a_run_counts_its_tasks_with_itself(
    postgresql, app, db, monkeypatch
):
    monkeypatch.setattr(dispatch, "_send", lambda message: None)
    wf = Workflow.create("transcode-one", data={"video_id": 1, "quality": "hd"})
    wf.start()
    task = wf.tasks[0].model
    task_id, celery_id = task.id, task.celery_id
    orchestrator.atomic(orchestrator.claim, task_id, celery_id)
    with count_statements(db) as statements:
        assert orchestrator.atomic(orchestrator.succeed, task_id, celery_id, 1)
    # The root's lock, the success with the count, the run's status (and
    # its notification), the versions: no count of its own.
    statements = [s for s in statements if "SAVEPOINT" not in s]
    assert len(statements) == 4
    assert not [s for s in statements if s.startswith("SELECT wtflow_task.status")]
    assert Workflow.get(wf.id).status == "success"


def test_a_claim_leaves_no_unit_of_work_of_continuum_behind(app, clean, monkeypatch):
    """Continuum forgets a unit of work at the commit of the session it was
    made for; one made for the scoped session would stay, with its
    transaction, for the next transaction on the connection."""
    monkeypatch.setattr(dispatch, "_send", lambda message: None)
    wf = Workflow.create("add-chain", start=True)
    task = wf.tasks[0].model
    assert orchestrator.atomic(orchestrator.claim, task.id, task.celery_id)
    assert versioning_manager.units_of_work == {}
    # And the unit of work a transaction uses is the session's own.
    with _db.session.begin():
        unit = versioning._continuum(_db.session)
        assert versioning._continuum(_db.session()) is unit


def test_a_new_run_is_one_statement_with_its_first_versions(
    postgresql, app, db, monkeypatch
):
    sent = []
    monkeypatch.setattr(dispatch, "_send", lambda m: sent.append(m) or True)
    with count_statements(db) as statements:
        wf = Workflow.create("fan-out", data={"video_id": 1}, start=True)
    assert len([s for s in statements if "SAVEPOINT" not in s]) == 1
    db.session.expire_all()
    run = db.session.get(WorkflowRun, wf.id)
    tasks = TaskRun.query.filter_by(workflow_id=wf.id).order_by(TaskRun.position)
    assert (run.status, run.data, run.output) == (
        "running",
        {"video_id": 1},
        {"task": 5},
    )
    assert [t.status for t in tasks] == ["queued"] * 5 + ["pending"]
    assert [t.remaining for t in tasks] == [0] * 5 + [5]
    assert sorted(m.celery_id for m in sent) == sorted(t.celery_id for t in tasks[:5])
    assert TaskDependency.query.filter_by(task_id=tasks[5].id).count() == 5
    # First versions (INSERT) of the run and of every task, in one transaction.
    run_version = version_class(WorkflowRun)
    [first] = db.session.query(run_version).filter_by(id=wf.id)
    versions = [task_versions(db, t.id) for t in tasks]
    assert (first.operation_type, first.status, first.created) == (
        0,
        "running",
        run.created,
    )
    assert {v[0][2] for v in versions} == {first.transaction_id}
    assert [v[0][:2] for v in versions] == [(t.status, t.celery_id) for t in tasks]


def test_a_new_run_keeps_its_times_whatever_the_sessions_time_zone(postgresql, app, db):
    """Times inserted from the JSON document are UTC, not read in ``TimeZone``."""
    from sqlalchemy import text

    db.session.execute(text("SET LOCAL TIME ZONE 'America/New_York'"))
    before = utcnow()
    with count_statements(db) as statements:
        wf = Workflow.create("add-chain")  # one statement (see above)
    assert len([s for s in statements if "SAVEPOINT" not in s]) == 1
    db.session.expire_all()
    run = db.session.get(WorkflowRun, wf.id)
    assert before <= run.created <= utcnow()
    [task] = TaskRun.query.filter_by(workflow_id=wf.id, position=0)
    assert before <= task.created <= utcnow()
