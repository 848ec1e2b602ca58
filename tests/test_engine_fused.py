# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""PostgreSQL's one-statement transitions: the claim and the success."""

import itertools
import uuid
from contextlib import contextmanager

import pytest
import sqlalchemy as sa
from celery import chain, chord, group
from invenio_db import db as _db
from sqlalchemy_continuum import version_class, versioning_manager

from invenio_wtflow import Workflow, config, current_wtflow
from invenio_wtflow.engine import (
    dispatch,
    fused,
    orchestrator,
    prepared,
    statements,
    versioning,
)
from invenio_wtflow.engine.status import default_status, default_status_sql
from invenio_wtflow.models import (
    TaskDependency,
    TaskRun,
    TaskStatus,
    WorkflowRun,
    utcnow,
)
from invenio_wtflow.tasks import _execution

from .example_tasks import add, echo, tsum
from .test_engine_dynamic import ORCHESTRATE, is_pass, nodes
from .test_engine_orchestrator import count_statements


@contextmanager
def sent_statements(engine=None):
    """Record each statement sent (but ``PREPARE``) with the driver's autocommit flag.

    :param engine: the engine to watch (the application's by default).
    :yields: the list of ``(statement, autocommit)`` it fills.
    """
    engine = _db.engine if engine is None else engine
    sent = []

    def record(conn, cursor, statement, *args):
        if not statement.startswith("PREPARE "):
            sent.append((statement, cursor.connection.autocommit))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


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


def claimed(uow, task_id, celery_id, retries, func):
    """Claim an attempt and compute its arguments, as a worker does."""
    row = orchestrator.claim(uow, task_id, celery_id, retries)
    return _execution(uow, row, celery_id, retries, func)


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
        db, claimed, first.id, first.celery_id, 1, echo.run
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
        db, claimed, second.id, second.celery_id, 0, add.run
    )
    assert execution.args == (41, 1) and len(statements) == 1


def test_a_claim_told_its_task_takes_no_input_reads_none(postgresql, started, db):
    """The message says whether the task takes upstream results (its
    signature's ``input``); told it takes none, the claim's statement has no
    read of them. Told wrongly, the task still gets its arguments: they are
    read after the claim."""
    wf, sent = started
    first = wf.tasks[0].model
    assert [m.takes_input for m in sent] == [False]
    row = orchestrator.atomic(orchestrator.claim, first.id, first.celery_id)
    orchestrator.record_success(first.id, first.celery_id, 41, 0, row.dependants)
    assert [m.takes_input for m in sent[1:]] == [True]
    assert sent[1].headers == {
        dispatch.HEADER: sent[1].task_run_id,
        dispatch.INPUT_HEADER: True,
    }
    second = db.session.get(TaskRun, wf.tasks[1].id)
    row = orchestrator.atomic(
        orchestrator.claim, second.id, second.celery_id, 0, None, upstream=False
    )
    assert row.upstream is None
    execution, statements = statements_of(
        db, _execution, row, second.celery_id, 0, add.run
    )
    assert execution.args == (41, 1) and len(statements) == 1
    transactions, values = versioning.transaction_values(db.session)
    full, light = (
        str(fused._claim_statement(transactions, tuple(values), db.engine.dialect, u))
        for u in (True, False)
    )
    assert "jsonb_object_agg" in full and "jsonb_object_agg" not in light


def test_a_stale_claim_or_success_writes_nothing(postgresql, started, db):
    wf, _ = started
    first = wf.tasks[0].model
    transactions = versioning_manager.transaction_cls
    before = db.session.query(transactions).count()
    assert orchestrator.atomic(orchestrator.claim, first.id, "not-the-attempt") is None
    # (A success of the queued attempt itself is taken for a lost claim.)
    assert not orchestrator.record_success(first.id, "not-the-attempt", 1, 0, 1)
    assert not orchestrator.atomic(orchestrator.succeed, first.id, first.celery_id, 1)
    assert db.session.query(transactions).count() == before
    assert [v[0] for v in task_versions(db, first.id)] == ["queued"]


def test_the_success_that_finishes_a_run_is_one_statement_under_the_root_lock(
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
    # The root's lock, then the success with the run's status, its
    # notification and every version.
    statements = [s for s in statements if "SAVEPOINT" not in s]
    assert len(statements) == 2
    wf = Workflow.get(wf.id)
    assert (wf.status, wf.result) == ("success", 1)
    assert wf.model.finished_at is not None
    runs = [(h["status"], h["transaction_id"]) for h in wf.history()]
    tasks = task_versions(db, task_id)
    assert [status for status, _ in runs] == ["pending", "running", "success"]
    assert [status for status, _, _ in tasks] == [
        "pending",
        "queued",
        "running",
        "success",
    ]
    # One transaction holds both last versions.
    assert runs[-1][1] == tasks[-1][2]


def test_a_success_under_the_root_lock_queues_and_versions_its_dependants(
    postgresql, app, db, monkeypatch
):
    sent = []
    monkeypatch.setattr(dispatch, "_send", lambda m: sent.append(m) or True)
    current_wtflow.register(
        "fork-after-one", chain(add.si(1, 1), group(add.s(1), add.s(2)))
    )
    wf = Workflow.create("fork-after-one", start=True)
    first = wf.tasks[0].model
    task_id, celery_id = first.id, first.celery_id
    orchestrator.atomic(orchestrator.claim, task_id, celery_id)
    sent.clear()
    with count_statements(db) as statements:
        assert orchestrator.atomic(orchestrator.succeed, task_id, celery_id, 2)
    assert len([s for s in statements if "SAVEPOINT" not in s]) == 2
    wf = Workflow.get(wf.id)
    ready = [t.model for t in wf.tasks[1:]]
    assert [t.status for t in ready] == ["queued", "queued"]
    assert [(m.task_run_id, m.celery_id) for m in sent] == [
        (str(t.id), t.celery_id) for t in ready
    ]
    # The run stays running: its status is not written again.
    assert [h["status"] for h in wf.history()] == ["running"]
    success = task_versions(db, task_id)[-1]
    for task in ready:
        assert task_versions(db, task.id)[-1] == ("queued", task.celery_id, success[2])


def test_the_status_rule_in_sql_is_the_default_rule(postgresql, db):
    combinations = [
        counts
        for counts in itertools.product(range(3), repeat=len(TaskStatus))
        if any(counts)
    ]
    rows = ", ".join(
        f"({index}, '{status.value}')"
        for index, counts in enumerate(combinations)
        for status, count in zip(TaskStatus, counts)
        for _ in range(count)
    )
    derived = dict(
        db.session.execute(
            sa.text(
                f"SELECT combination, {default_status_sql('status')} "
                f"FROM (VALUES {rows}) AS tasks (combination, status) "
                "GROUP BY combination"
            )
        ).all()
    )
    for index, counts in enumerate(combinations):
        expected = default_status(
            {status.value: count for status, count in zip(TaskStatus, counts)}
        )
        assert derived[index] == expected.value, counts


def test_a_node_the_success_makes_ready_is_left_to_the_orchestrator(
    postgresql, app, db, broker
):
    """A run keeps its nodes when its name is registered again without populate()."""
    wf = Workflow.create("regression", data={"architectures": ["x86"]}).start()
    broker.deliver(is_pass)  # populate: the build, and the callback after it
    current_wtflow.register("regression", add.si(1, 1))
    try:
        broker.deliver(lambda m: not is_pass(m))  # the build
        by = nodes(wf)
        assert (by["x86"].status, by["compare"].status) == ("success", "queued")
        assert [m.name for m in broker.messages] == [ORCHESTRATE]
        assert Workflow.get(wf.id).status == "running"
        compare = task_versions(db, by["compare"].id)
        assert compare[-1][0] == "queued"
        assert compare[-1][2] == task_versions(db, by["x86"].id)[-1][2]
    finally:
        current_wtflow.register("regression", "tests.example_tasks:RegressionAnalysis")


def test_a_claim_and_a_creation_commit_as_they_end(app, clean, monkeypatch):
    """A claim is one statement sent in autocommit mode: no ``BEGIN``, no
    ``COMMIT``; so is a run created at once (its retry is safe: see
    ``test_a_creation_retried_after_a_lost_answer_inserts_one_run``), and
    the wait for its flush after the publish, when it had one."""
    if _db.engine.dialect.name != "postgresql":
        pytest.skip("one-statement transitions are PostgreSQL's")
    monkeypatch.setattr(dispatch, "_send", lambda message: None)
    with sent_statements() as sent:
        wf = Workflow.create("add-chain", start=True)
        created = [autocommit for _, autocommit in sent]
        if prepared.enabled(_db.session):
            assert sent[-1][0] == prepared._FLUSH
            created.pop()
        task_id = wf.tasks[0].id
        celery_id = _db.session.get(TaskRun, task_id).celery_id
        _db.session.commit()
        del sent[:]
        assert orchestrator.atomic(orchestrator.claim, task_id, celery_id)
        claimed = [autocommit for _, autocommit in sent]
    assert (created, claimed) == ([True], [True])
    statuses = [v[0] for v in task_versions(_db, task_id)]
    assert statuses == ["queued", "running"]
    # The connection goes back to the pool as it came: in transactions.
    _db.session.execute(sa.text("SELECT 1"))
    assert _db.session.connection().connection.dbapi_connection.autocommit is False
    _db.session.rollback()


def test_a_creation_retried_after_a_lost_answer_inserts_one_run(
    app, clean, monkeypatch
):
    """The creation committed, its answer was lost: the retry (same run id)
    inserts nothing more and publishes the tasks the first try queued."""
    if _db.engine.dialect.name != "postgresql":
        pytest.skip("one-statement creation is PostgreSQL's")
    sent = []
    monkeypatch.setattr(dispatch, "_send", lambda m: sent.append(m) or True)
    monkeypatch.setattr(orchestrator.time, "sleep", lambda seconds: None)
    create, tries = orchestrator.fused.create, []

    def lose_first_answer(*args, **kwargs):
        tries.append(create(*args, **kwargs))
        if len(tries) == 1:
            raise sa.exc.OperationalError("EXECUTE ...", {}, Exception("lost"))
        return tries[-1]

    monkeypatch.setattr(orchestrator.fused, "create", lose_first_answer)
    wf = Workflow.create("fan-out", start=True)
    assert tries == [True] and wf.created_now  # the retry found the run
    runs = _db.session.query(WorkflowRun).all()
    assert [run.id for run in runs] == [wf.id]
    tasks = _db.session.query(TaskRun).filter_by(workflow_id=wf.id).all()
    assert len(tasks) == len(
        current_wtflow.get_workflow_class("fan-out").compile().nodes
    )
    queued = {t.celery_id: str(t.id) for t in tasks if t.status == "queued"}
    assert queued and {m.celery_id: m.task_run_id for m in sent} == queued
    versions = _db.session.query(version_class(TaskRun)).count()
    assert versions == len(tasks)  # one try's versions, not two
    assert [h["status"] for h in wf.history()] == ["running"]


def test_a_run_created_at_once_is_published_before_its_flush(app, clean, monkeypatch):
    """Its commit does not wait for the WAL flush; the publish follows it at
    once, then the call waits for the flush (a transaction that writes a
    logical message) and returns: the flush overlaps the delivery."""
    if not prepared.enabled(_db.session):
        pytest.skip("a message with SET LOCAL: prepared statements (psycopg2)")
    published = []  # the statements sent before each publish
    with sent_statements() as sent:
        monkeypatch.setattr(
            dispatch, "_send", lambda m: published.append(len(sent)) or True
        )
        wf = Workflow.create("fan-out", start=True)
    creation, flush = [statement for statement, _ in sent]
    assert creation.startswith("SET LOCAL synchronous_commit TO off; EXECUTE ")
    assert flush == prepared._FLUSH
    queued = sum(t.status == "queued" for t in wf.tasks)
    assert queued > 1 and published == [1] * queued
    with sent_statements() as sent:
        dispatch.publish([])  # nothing left to wait for
        with orchestrator.EngineUnitOfWork(_db.session) as uow:
            dispatch.dispatcher(uow)
            uow.commit()
    assert sent == []
    # The setting was the message's own: the connection commits as usual.
    with prepared.alone(_db.session) as own:
        assert own.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"


def wal_positions():
    """PostgreSQL's WAL insert and flush positions, as text."""
    with _db.engine.connect() as connection:
        return connection.exec_driver_sql(
            "SELECT pg_current_wal_insert_lsn()::text, "
            "pg_current_wal_flush_lsn()::text"
        ).one()


def test_a_run_created_at_once_is_flushed_when_create_returns(app, clean, monkeypatch):
    """Durable as before: the WAL is flushed past the creation's commit (the
    insert position when the wait begins) once ``create`` returns. A
    transaction that only takes an id would commit without waiting."""
    if not prepared.enabled(_db.session):
        pytest.skip("a message with SET LOCAL: prepared statements (psycopg2)")
    monkeypatch.setattr(dispatch, "_send", lambda m: True)
    await_flush, committed = prepared.await_flush, []

    def noting_the_commit(session):
        if session.info.get(prepared._UNFLUSHED):
            committed.append(wal_positions()[0])  # past the creation's commit
        return await_flush(session)

    monkeypatch.setattr(prepared, "await_flush", noting_the_commit)
    behind = []
    for _ in range(20):
        del committed[:]
        Workflow.create("fan-out", start=True)
        [commit] = committed
        with _db.engine.connect() as connection:
            behind.append(
                connection.exec_driver_sql(
                    "SELECT pg_wal_lsn_diff(%(commit)s, pg_current_wal_flush_lsn())",
                    {"commit": commit},
                ).scalar()
            )
    assert max(behind) <= 0


def test_a_creation_whose_answer_was_lost_still_waits_for_its_flush(
    app, clean, monkeypatch
):
    """The creation committed and its answer was lost: the retry finds the
    run (without sending the creation again) and waits for the flush all
    the same: the session noted it before the message left."""
    if not prepared.enabled(_db.session):
        pytest.skip("a message with SET LOCAL: prepared statements (psycopg2)")
    monkeypatch.setattr(dispatch, "_send", lambda m: True)
    monkeypatch.setattr(orchestrator.time, "sleep", lambda seconds: None)
    run, creations = prepared._run, []

    def losing_the_creations_answer(connection, plan, sql, values):
        answer = run(connection, plan, sql, values)
        if "synchronous_commit TO off" in sql:
            creations.append(sql)
            raise sa.exc.OperationalError(sql, values, Exception("lost"))
        return answer

    monkeypatch.setattr(prepared, "_run", losing_the_creations_answer)
    with sent_statements() as sent:
        wf = Workflow.create("fan-out", start=True)
    assert len(creations) == 1 and wf.created_now
    assert [s for s, _ in sent][-1] == prepared._FLUSH
    assert prepared._UNFLUSHED not in _db.session.info


def test_a_publish_that_raises_still_waits_for_the_flush(app, clean, monkeypatch):
    """The error reaches the caller after the wait: the run it may retry
    with is durable."""
    if not prepared.enabled(_db.session):
        pytest.skip("a message with SET LOCAL: prepared statements (psycopg2)")

    def broken(messages):
        raise RuntimeError("publish interrupted")

    monkeypatch.setattr(dispatch, "publish", broken)
    with sent_statements() as sent, pytest.raises(RuntimeError):
        Workflow.create("fan-out", start=True)
    assert [s for s, _ in sent][-1] == prepared._FLUSH
    assert prepared._UNFLUSHED not in _db.session.info


def test_a_run_created_pending_or_in_a_transaction_waits_for_its_flush(
    app, clean, monkeypatch
):
    """Nothing to publish, or a commit that is the session's: one message,
    which waits for its flush as it commits, and nothing after."""
    if not prepared.enabled(_db.session):
        pytest.skip("a message with SET LOCAL: prepared statements (psycopg2)")
    monkeypatch.setattr(dispatch, "_send", lambda m: True)
    with sent_statements() as sent:
        Workflow.create("fan-out")
    [(creation, autocommit)] = sent
    assert autocommit and creation.startswith("EXECUTE ")
    _db.session.execute(sa.text("SELECT 1"))  # the caller's transaction
    with sent_statements() as sent:
        Workflow.create("fan-out", start=True)
    assert [s.split()[0] for s, _ in sent] == ["EXECUTE"]
    assert prepared._UNFLUSHED not in _db.session.info
    _db.session.commit()


def test_a_lost_wait_for_the_flush_is_retried_before_the_call_returns(
    app, clean, monkeypatch
):
    """The connection is lost while the call waits for the flush: the
    transaction is tried again, finds the run committed, publishes its
    attempts again (a duplicate claims nothing) and waits again."""
    if not prepared.enabled(_db.session):
        pytest.skip("a message with SET LOCAL: prepared statements (psycopg2)")
    sent = []
    monkeypatch.setattr(dispatch, "_send", lambda m: sent.append(m) or True)
    monkeypatch.setattr(orchestrator.time, "sleep", lambda seconds: None)
    await_flush, waits = prepared.await_flush, []

    def lose_first_wait(session):
        waits.append(session.info.get(prepared._UNFLUSHED))
        if len(waits) == 1:
            raise sa.exc.OperationalError(prepared._FLUSH, {}, Exception("lost"))
        return await_flush(session)

    monkeypatch.setattr(prepared, "await_flush", lose_first_wait)
    wf = Workflow.create("fan-out", start=True)
    assert waits == [True, True]
    assert prepared._UNFLUSHED not in _db.session.info
    assert [run.id for run in _db.session.query(WorkflowRun)] == [wf.id]
    queued = {str(t.id): t.model.celery_id for t in wf.tasks if t.status == "queued"}
    assert [(m.task_run_id, m.celery_id) for m in sent] == 2 * list(queued.items())


def test_a_claim_may_commit_without_waiting_for_its_flush(app, clean, monkeypatch):
    """``WTFLOW_CLAIM_SYNCHRONOUS_COMMIT = False`` (the default): the claim's
    message turns ``synchronous_commit`` off for itself, and for an attempt
    whose message says its queuing commit may not be flushed, only once the
    WAL is flushed up to it; the claim is seen at once (a duplicate delivery
    claims nothing). With ``True``, the claim waits."""
    if not prepared.enabled(_db.session):
        pytest.skip("a message with SET LOCAL: prepared statements (psycopg2)")
    monkeypatch.setattr(dispatch, "_send", lambda m: True)
    attempts = []
    for _ in range(3):
        task = Workflow.create("add-chain", start=True).tasks[0]
        attempts.append((task.id, task.model.celery_id))
    _db.session.commit()
    claim = orchestrator.claim
    monkeypatch.setitem(app.config, "WTFLOW_CLAIM_SYNCHRONOUS_COMMIT", True)
    with sent_statements() as sent:
        assert orchestrator.atomic(claim, *attempts[0], unflushed=True)
    [(flushed, _)] = sent
    monkeypatch.setitem(app.config, "WTFLOW_CLAIM_SYNCHRONOUS_COMMIT", False)
    with sent_statements() as sent:
        assert orchestrator.atomic(claim, *attempts[1])
        assert orchestrator.atomic(claim, *attempts[1]) is None  # a duplicate
        assert orchestrator.atomic(claim, *attempts[2], unflushed=True)
    assert config.WTFLOW_CLAIM_SYNCHRONOUS_COMMIT is False
    assert flushed.startswith("EXECUTE ")
    guard = prepared._UNFLUSHED_IF_CAUGHT_UP
    assert [s.split("; ")[0] for s, _ in sent[:2]] == [
        "SET LOCAL synchronous_commit TO off"
    ] * 2
    assert sent[2][0].startswith(guard + "EXECUTE ")
    assert {
        t.status
        for t in _db.session.query(TaskRun).filter(
            TaskRun.id.in_([task_id for task_id, _ in attempts])
        )
    } == {"running"}


def test_the_attempts_of_a_run_created_unflushed_say_so(app, clean, monkeypatch):
    """Published before the creation's flush, a run's first attempts carry
    ``UNFLUSHED_HEADER``; an attempt queued by a success (flushed before its
    publish) or by a creation in the caller's transaction does not."""
    sent = []
    monkeypatch.setattr(dispatch, "_send", lambda m: sent.append(m) or True)
    wf = Workflow.create("add-chain", start=True)
    unflushed = prepared.enabled(_db.session)
    [first] = sent
    assert first.headers.get(dispatch.UNFLUSHED_HEADER, False) is unflushed
    assert orchestrator.atomic(orchestrator.claim, first.task_run_id, first.celery_id)
    orchestrator.record_success(first.task_run_id, first.celery_id, 3, 0, 1)
    [_, second] = sent
    assert second.task_run_id == str(wf.tasks[1].id)
    assert dispatch.UNFLUSHED_HEADER not in second.headers
    _db.session.execute(sa.text("SELECT 1"))  # the caller's transaction
    Workflow.create("add-chain", start=True)
    _db.session.commit()
    assert dispatch.UNFLUSHED_HEADER not in sent[2].headers


def test_a_run_inserted_again_under_its_id_inserts_nothing(app, clean, monkeypatch):
    """As a retry whose first try is still in flight would: the conflict on
    the run's id decides, and the first try's queued tasks are published."""
    if _db.engine.dialect.name != "postgresql":
        pytest.skip("one-statement creation is PostgreSQL's")
    sent = []
    monkeypatch.setattr(dispatch, "_send", lambda m: sent.append(m) or True)
    graph = current_wtflow.compiled("fan-out")
    workflow_id = uuid.uuid4()
    create = (orchestrator.create_run, "fan-out", graph, {})
    first, created = orchestrator.atomic(*create, started=True, workflow_id=workflow_id)
    assert created and first.id == workflow_id
    published = {m.celery_id for m in sent}
    del sent[:]
    again, created = orchestrator.atomic(*create, started=True, workflow_id=workflow_id)
    assert created and again.id == workflow_id
    assert {m.celery_id for m in sent} == published
    tasks = _db.session.query(TaskRun).filter_by(workflow_id=workflow_id).count()
    assert tasks == len(graph.nodes)
    assert _db.session.query(version_class(TaskRun)).count() == tasks
    assert _db.session.query(version_class(WorkflowRun)).count() == 1


def test_alone_is_a_connection_of_its_own_only_outside_a_transaction(app, clean):
    if _db.engine.dialect.name != "postgresql":
        pytest.skip("autocommit messages are PostgreSQL's")
    with prepared.alone(_db.session) as own:
        raw = own.connection.dbapi_connection
        assert raw.autocommit
    assert raw.autocommit is False  # switched back as the pool took it back
    _db.session.execute(sa.text("SELECT 1"))  # the caller's transaction
    try:
        with prepared.alone(_db.session) as own:
            assert own is None
    finally:
        _db.session.rollback()


def test_a_creation_in_the_callers_transaction_stays_in_it(app, clean, monkeypatch):
    if _db.engine.dialect.name != "postgresql":
        pytest.skip("one-statement creation is PostgreSQL's")
    monkeypatch.setattr(dispatch, "_send", lambda message: True)
    _db.session.execute(sa.text("SELECT 1"))  # the caller's transaction
    with sent_statements() as sent:
        wf = Workflow.create("fan-out", start=True)
    # The creation went in the session's transaction.
    assert [autocommit for _, autocommit in sent] == [False]
    assert Workflow.get(wf.id).status == "running"


def test_a_root_runs_success_is_one_message_that_commits_as_it_ends(
    app, clean, monkeypatch
):
    if not prepared.enabled(_db.session):
        pytest.skip("two prepared statements in one message: psycopg2's")
    monkeypatch.setattr(dispatch, "_send", lambda message: None)
    wf = Workflow.create("transcode-one", data={"video_id": 1, "quality": "hd"})
    wf.start()
    task_id = wf.tasks[0].id
    celery_id = _db.session.get(TaskRun, task_id).celery_id
    _db.session.commit()
    row = orchestrator.atomic(orchestrator.claim, task_id, celery_id)
    runs = (str(row.root_id), str(row.workflow_id))
    transactions = versioning_manager.transaction_cls
    before = _db.session.query(transactions).count()
    _db.session.commit()
    with sent_statements() as sent:
        # A stale report changes nothing (its message, then succeed's look).
        assert not orchestrator.record_success(
            task_id, "other", 1, 0, 0, runs, row.run_name
        )
        assert _db.session.query(transactions).count() == before
        _db.session.commit()
        del sent[:]
        assert orchestrator.record_success(
            task_id, celery_id, 1, 0, row.dependants, runs, row.run_name
        )
    ((statement, autocommit),) = sent
    assert statement.count("EXECUTE ") == 2 and autocommit  # lock; success
    lock = prepared._prepared(statements.lock_root(False, True), _db.engine.dialect)
    assert statement.startswith(f"EXECUTE {lock.name} (")  # the root's one key
    wf = Workflow.get(wf.id)
    assert (wf.status, wf.result) == ("success", 1)
    runs = [(h["status"], h["transaction_id"]) for h in wf.history()]
    tasks = task_versions(_db, task_id)
    assert [status for status, _ in runs] == ["pending", "running", "success"]
    assert [status for status, _, _ in tasks][-2:] == ["running", "success"]
    assert runs[-1][1] == tasks[-1][2]
    assert _db.session.query(transactions).count() == before + 1


def test_a_root_run_is_locked_by_its_one_key(postgresql, db):
    """The generic plan of ``id = :root`` is a lookup of the key, on a small
    table too (where the two keys' ``OR`` scans it), and locks the row; a
    child run and its root are locked by their two keys, root first."""
    root, child = uuid.uuid4(), uuid.uuid4()
    statement, params = orchestrator._run_and_root_lock(str(root), root, rows=True)
    assert (statement, params) == (statements.lock_root(False, True), {"root_id": root})
    statement, params = orchestrator._run_and_root_lock(child, root, shared=True)
    assert statement is statements.lock_run_and_root(True, False)
    assert params == {"workflow_id": child, "root_id": root}
    plan = prepared._prepared(statements.lock_root(False, True), db.engine.dialect)
    connection = db.session.connection()
    connection.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
    connection.exec_driver_sql(plan.prepare.replace("%%", "%"))
    explained = (
        connection.exec_driver_sql(f"EXPLAIN EXECUTE {plan.name} ('{root}')")
        .scalars()
        .all()
    )
    assert "LockRows" in explained[0]
    assert "Index Scan using pk_wtflow_workflow" in explained[1]
    connection.exec_driver_sql(f"DEALLOCATE {plan.name}")


def claimed_in_clean_run(monkeypatch, name, definition):
    """Start a run of ``definition`` for real; claim its first tasks.

    :returns: the run and, per claimed task, ``(id, celery_id, claim row)``.
    """
    if not prepared.enabled(_db.session):
        pytest.skip("two prepared statements in one message: psycopg2's")
    monkeypatch.setattr(dispatch, "_send", lambda message: None)
    current_wtflow.register(name, definition)
    wf = Workflow.create(name, start=True)
    queued = [(t.id, t.model.celery_id) for t in wf.tasks if t.model.status == "queued"]
    _db.session.commit()
    return wf, [
        (
            task_id,
            celery_id,
            orchestrator.atomic(orchestrator.claim, task_id, celery_id),
        )
        for task_id, celery_id in queued
    ]


def recorded_success(task_id, celery_id, row, result=1):
    """``record_success`` as the worker calls it; the statements it sent."""
    runs = (str(row.root_id), str(row.workflow_id))
    with sent_statements() as sent:
        applied = orchestrator.record_success(
            task_id, celery_id, result, 0, row.dependants, runs, row.run_name
        )
    return applied, sent


def test_a_shared_success_is_one_message_that_commits_as_it_ends(
    app, clean, monkeypatch
):
    wf, ((task_id, celery_id, row),) = claimed_in_clean_run(
        monkeypatch, "chain-of-three", chain(add.si(1, 1), add.s(1), add.s(1))
    )
    applied, sent = recorded_success(task_id, celery_id, row, 2)
    assert applied
    ((statement, autocommit),) = sent
    assert statement.count("EXECUTE ") == 2 and autocommit  # locks; success
    wf = Workflow.get(wf.id)
    first, second, third = (t.model for t in wf.tasks)
    assert [t.status for t in (first, second, third)] == [
        "success",
        "queued",
        "pending",
    ]
    assert wf.status == "running"
    success = task_versions(_db, first.id)[-1]
    assert task_versions(_db, second.id)[-1] == ("queued", second.celery_id, success[2])


def test_a_shared_success_that_needs_the_root_lock_changes_nothing_first(
    app, clean, monkeypatch
):
    wf, claimed = claimed_in_clean_run(
        monkeypatch, "pair-then-sum", chord([add.si(1, 1), add.si(2, 2)], tsum.s())
    )
    (first_id, first_celery, first_row), (second_id, _, _) = claimed
    # The other member waits (as a delegated task would): the run's status
    # then changes with this success, which only the root lock may do.
    _db.session.execute(
        sa.text("UPDATE wtflow_task SET status = 'waiting' WHERE id = :id"),
        {"id": second_id},
    )
    _db.session.commit()
    applied, sent = recorded_success(first_id, first_celery, first_row, 2)
    assert applied
    assert sent[0][0].count("EXECUTE ") == 2 and len(sent) > 1
    assert Workflow.get(wf.id).status == "waiting"
    statuses = [v[0] for v in task_versions(_db, first_id)]
    assert statuses == ["queued", "running", "success"]


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
