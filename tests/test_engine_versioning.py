# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Versions of the rows the engine changes with Core statements."""

from types import SimpleNamespace

import pytest
from celery import chord
from sqlalchemy import event, update
from sqlalchemy_continuum import version_class
from sqlalchemy_continuum.operation import Operation

from invenio_wtflow import Workflow, current_wtflow
from invenio_wtflow.engine import dispatch, orchestrator, versioning
from invenio_wtflow.errors import UnsupportedDatabaseError
from invenio_wtflow.models import TaskRun, WorkflowRun

from .example_tasks import add, tsum
from .test_engine_orchestrator import count_statements


@pytest.fixture
def task_id(app, db, monkeypatch):
    """A pending task of a new run; nothing is published."""
    monkeypatch.setattr(dispatch, "_send", lambda message: None)
    return Workflow.create("add-chain").tasks[0].id


def set_message(task_id, message):
    """Change a task's message with Core, and note it for versioning."""
    orchestrator.db.session.execute(
        update(TaskRun.__table__).where(TaskRun.id == task_id).values(message=message)
    )
    versioning.changed(orchestrator.db.session, TaskRun, [task_id])


def versions(db, task_id):
    """The task's version rows, oldest first."""
    model = version_class(TaskRun)
    return (
        db.session.query(model)
        .filter_by(id=task_id)
        .order_by(model.transaction_id)
        .all()
    )


def test_a_core_update_is_versioned_when_its_transaction_commits(task_id, db):
    def change(uow):
        set_message(task_id, "changed by Core")
        assert len(versions(db, task_id)) == 1  # not yet: at the commit

    orchestrator.atomic(change)
    first, second = versions(db, task_id)
    assert (second.message, second.operation_type) == ("changed by Core", 1)
    assert second.transaction_id > first.transaction_id


def test_one_transaction_of_orm_and_core_changes_writes_one_version(task_id, db):
    def orm_then_core(uow):
        orchestrator.db.session.get(TaskRun, task_id).message = "ORM"
        orchestrator.db.session.flush()  # Continuum writes its version now
        set_message(task_id, "Core")

    def core_then_orm(uow):
        set_message(task_id, "Core")
        task = orchestrator.db.session.get(TaskRun, task_id)
        orchestrator.db.session.refresh(task)
        task.message = "ORM"

    orchestrator.atomic(orm_then_core)
    orchestrator.atomic(core_then_orm)
    # The version of each transaction holds the row as it was committed.
    assert [(v.message, v.operation_type) for v in versions(db, task_id)] == [
        (None, 0),
        ("Core", 1),
        ("ORM", 1),
    ]


def test_a_row_inserted_and_changed_in_one_transaction_stays_an_insert(
    app, db, monkeypatch
):
    monkeypatch.setattr(dispatch, "_send", lambda message: None)
    graph = current_wtflow.get_workflow_class("add-chain").compile()

    def create_and_change(uow):
        run, _ = orchestrator.create(uow, "add-chain", graph, {})
        task_id = (
            orchestrator.db.session.query(TaskRun.id)
            .filter_by(workflow_id=run.id, position=0)
            .scalar()
        )
        set_message(task_id, "changed at once")
        return task_id

    task_id = orchestrator.atomic(create_and_change)
    [version] = versions(db, task_id)
    assert (version.message, version.operation_type) == ("changed at once", 0)


def test_a_rolled_back_change_is_not_versioned(task_id, db):
    def change_then_fail(uow):
        set_message(task_id, "rolled back")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        orchestrator.atomic(change_then_fail)
    orchestrator.db.session.rollback()
    orchestrator.atomic(lambda uow: orchestrator.lock_workflow(task_id=task_id))
    assert [v.message for v in versions(db, task_id)] == [None]
    assert db.session.get(TaskRun, task_id).message is None


class _Oracle:
    name = "oracle"
    identifier_preparer = SimpleNamespace(quote=str)


def test_a_database_without_upsert_is_refused():
    with pytest.raises(UnsupportedDatabaseError, match="not on oracle"):
        versioning._copy_statement(TaskRun, Operation.UPDATE, _Oracle())


def test_the_transaction_row_records_who_and_where_from(app, task_id, db):
    """The transaction a Core change opens has Continuum's plugin values."""
    with app.test_request_context(environ_base={"REMOTE_ADDR": "10.0.0.7"}):
        orchestrator.atomic(lambda uow: set_message(task_id, "from a request"))
    version = versions(db, task_id)[-1]
    transaction = db.session.get(
        versioning._continuum(db.session).manager.transaction_cls,
        version.transaction_id,
    )
    assert transaction.remote_addr == "10.0.0.7"
    assert transaction.issued_at is not None


def test_a_transaction_row_and_its_versions_are_one_statement_on_postgresql(
    task_id, db
):
    with count_statements(db) as statements:
        orchestrator.atomic(lambda uow: set_message(task_id, "one statement"))
    statements = [s for s in statements if "SAVEPOINT" not in s]
    if db.engine.dialect.name == "postgresql":
        assert len(statements) == 2  # the UPDATE, then the transaction and version
        first_copy = statements[1].lstrip()
        if first_copy.startswith("EXECUTE "):  # prepared (engine.prepared)
            assert "%(tx_issued_at)s" in first_copy and "%(ids_0)s" in first_copy
        else:
            assert first_copy.startswith("WITH wtflow_transaction AS")
    else:
        assert len(statements) == 3  # the UPDATE, the transaction, the version
    assert versions(db, task_id)[-1].message == "one statement"


def test_every_row_of_a_commit_is_versioned_under_one_transaction(
    app, clean, monkeypatch
):
    """Runs and tasks, inserted and changed, beyond one copy statement's chunk.

    Real commits (``clean``): Continuum keeps its bookkeeping per connection,
    and the ``db`` fixture's commits all run on one.
    """
    db = orchestrator.db
    monkeypatch.setattr(dispatch, "_send", lambda message: True)
    width = versioning._CHUNK + 100
    current_wtflow.register(
        "wide", chord([add.si(i, i) for i in range(width)], tsum.s())
    )
    transactions = versioning._continuum(db.session).manager.transaction_cls
    count = db.session.query(transactions).count
    before = count()
    wf = Workflow.create("wide", start=True)
    assert count() == before + 1
    task_version = version_class(TaskRun)

    def task_versions(operation):
        return (
            db.session.query(task_version)
            .join(TaskRun, TaskRun.id == task_version.id)
            .filter(TaskRun.workflow_id == wf.id)
            .filter(task_version.operation_type == operation)
            .all()
        )

    inserted = task_versions(Operation.INSERT)
    (run_version,) = db.session.query(version_class(WorkflowRun)).filter_by(id=wf.id)
    assert len(inserted) == width + 1
    assert {v.transaction_id for v in inserted} == {run_version.transaction_id}
    assert [v.status for v in inserted].count("queued") == width

    # Only tasks changed, more than one chunk of them: the first copy too.
    ids = [task.id for task in wf.tasks]

    def change_all(uow):
        orchestrator.db.session.execute(
            update(TaskRun.__table__)
            .where(TaskRun.workflow_id == wf.id)
            .values(message="all")
        )
        versioning.changed(orchestrator.db.session, TaskRun, ids)

    orchestrator.atomic(change_all)
    assert count() == before + 2
    changed = task_versions(Operation.UPDATE)
    assert len(changed) == width + 1 and {v.message for v in changed} == {"all"}
    assert len({v.transaction_id for v in changed}) == 1


def test_a_run_that_finishes_is_versioned_without_an_orm_flush(task_id, db):
    """The run's status is one Core ``UPDATE``, versioned with its last task."""
    run_id = db.session.get(TaskRun, task_id).workflow_id
    Workflow.get(run_id).start()
    flushes = []

    def record(*args):
        flushes.append(args)

    event.listen(db.session, "before_flush", record)
    try:
        for _ in range(3):  # add-chain: three tasks, one after the other
            task = next(
                t.model for t in Workflow.get(run_id).tasks if t.status == "queued"
            )
            orchestrator.atomic(orchestrator.claim, task.id, task.celery_id)
            orchestrator.atomic(orchestrator.succeed, task.id, task.celery_id, 2)
    finally:
        event.remove(db.session, "before_flush", record)
    assert flushes == []
    run = db.session.get(WorkflowRun, run_id)
    assert (run.status, run.finished_at is not None) == ("success", True)
    run_versions = (
        db.session.query(version_class(WorkflowRun))
        .filter_by(id=run_id)
        .order_by("transaction_id")
        .all()
    )
    assert [v.status for v in run_versions][-2:] == ["running", "success"]
    last_task = versions(db, task.id)[-1]
    assert last_task.status == "success"
    assert run_versions[-1].transaction_id == last_task.transaction_id
    assert run_versions[-1].operation_type == Operation.UPDATE
