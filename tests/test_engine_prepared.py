# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""The hot path's statements, prepared once per psycopg2 connection."""

from contextlib import contextmanager

import pytest
from invenio_db import db as _db
from sqlalchemy import String, TypeDecorator, bindparam, event, func, or_, select, text
from sqlalchemy.exc import (
    DataError,
    InvalidRequestError,
    MultipleResultsFound,
    NoResultFound,
    OperationalError,
)

from invenio_wtflow import Workflow
from invenio_wtflow.engine import dispatch, orchestrator, prepared, waiting
from invenio_wtflow.models import TaskRun, WorkflowRun

from .test_engine_fused import sent_statements
from .test_engine_orchestrator import count_statements
from .test_engine_waiting import listened


@pytest.fixture()
def psycopg2(db):
    """Skip unless the database is PostgreSQL through psycopg2."""
    if db.engine.dialect.driver != "psycopg2":
        pytest.skip("statements are prepared on psycopg2 connections only")


@pytest.fixture()
def psycopg2_clean(app):
    """Skip unless the database is PostgreSQL through psycopg2 (no ``db``)."""
    if _db.engine.dialect.driver != "psycopg2":
        pytest.skip("statements are prepared on psycopg2 connections only")


@pytest.fixture()
def sent_sql(db):
    """Every statement sent to the database, in order."""
    statements = []

    def record(conn, cursor, statement, *args):
        statements.append(statement.split(None, 1)[0])

    event.listen(db.engine, "before_cursor_execute", record)
    yield statements
    event.remove(db.engine, "before_cursor_execute", record)


@pytest.fixture()
def tasks(app, db, monkeypatch):
    """Two queued tasks of two runs, nothing published: ``(id, celery_id)``."""
    monkeypatch.setattr(dispatch, "_send", lambda message: None)
    return [
        (t.id, t.model.celery_id)
        for t in (Workflow.create("add-chain", start=True).tasks[0] for _ in "ab")
    ]


def test_a_connection_prepares_a_statement_once(psycopg2, tasks, sent_sql, db):
    for task_id, celery_id in tasks:
        assert orchestrator.atomic(orchestrator.claim, task_id, celery_id)
    claims = [s for s in sent_sql if s in ("PREPARE", "EXECUTE", "WITH")]
    assert claims == ["PREPARE", "EXECUTE", "EXECUTE"]
    assert [
        t.status
        for t in TaskRun.query.filter(TaskRun.id.in_([task_id for task_id, _ in tasks]))
    ] == ["running", "running"]


def test_a_creation_is_prepared_once_per_connection(psycopg2, db, monkeypatch):
    """The one statement that inserts a run, its tasks and versions."""
    monkeypatch.setattr(dispatch, "_send", lambda message: None)
    sent = []

    def record(conn, cursor, statement, *args):
        sent.append(statement.split(None, 1)[0])

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        runs = [Workflow.create("add-chain", start=True) for _ in "ab"]
    finally:
        event.remove(db.engine, "before_cursor_execute", record)
    assert [s for s in sent if s in ("PREPARE", "EXECUTE", "WITH")] == [
        "PREPARE",
        "EXECUTE",
        "EXECUTE",
    ]
    for run in runs:
        assert [t.status for t in run.tasks] == ["queued", "pending", "pending"]
        assert [v.status for v in run.model.versions] == ["running"]


def test_a_new_connection_prepares_again(psycopg2_clean, app, clean, monkeypatch):
    """Real connections from the pool (``clean``), closed between the claims."""
    monkeypatch.setattr(dispatch, "_send", lambda message: None)
    first, second = (
        Workflow.create("add-chain", start=True).tasks[0].model for _ in "ab"
    )
    claims = [(t.id, t.celery_id) for t in (first, second)]
    _db.session.commit()
    sent = []

    def record(conn, cursor, statement, *args):
        sent.append(statement.split(None, 1)[0])

    event.listen(_db.engine, "before_cursor_execute", record)
    try:
        assert orchestrator.atomic(orchestrator.claim, *claims[0])
        _db.session.remove()
        _db.engine.dispose()  # as after the database restarted
        assert orchestrator.atomic(orchestrator.claim, *claims[1])
    finally:
        event.remove(_db.engine, "before_cursor_execute", record)
    assert sent.count("PREPARE") == 2


def test_preparing_can_be_turned_off(psycopg2, app, tasks, sent_sql):
    app.config["WTFLOW_PREPARED_STATEMENTS"] = False
    try:
        for task_id, celery_id in tasks:
            assert orchestrator.atomic(orchestrator.claim, task_id, celery_id)
    finally:
        app.config["WTFLOW_PREPARED_STATEMENTS"] = True
    assert "PREPARE" not in sent_sql and "EXECUTE" not in sent_sql
    assert sent_sql.count("WITH") == 2


def test_a_prepared_statement_takes_its_parameters_by_name_and_type(
    psycopg2, tasks, db
):
    """Parameters used twice or in another order, literals, typed columns."""
    task_id, _ = tasks[0]
    statement = (
        text(
            "SELECT id, workflow_id, :tag AS tag, :tag || '%' AS pattern, position "
            "FROM wtflow_task WHERE id = :task_id AND position >= :least"
        )
        .bindparams(
            bindparam("task_id", type_=TaskRun.id.type),
            bindparam("least"),
            bindparam("tag"),
        )
        .columns(id=TaskRun.id.type, workflow_id=TaskRun.workflow_id.type)
    )
    for _ in range(2):
        row = prepared.execute(
            db.session, statement, {"least": 0, "task_id": task_id, "tag": "a"}
        ).one()
        assert (row.id, row.tag, row.pattern, row.position) == (task_id, "a", "a%", 0)
        assert row.workflow_id == db.session.get(TaskRun, task_id).workflow_id
    # A Core statement with literal values bound by SQLAlchemy.
    runs = WorkflowRun.__table__
    core = select(runs.c.status).where(
        or_(runs.c.status == "queued", runs.c.status == "running"),
        runs.c.id == bindparam("workflow_id", type_=runs.c.id.type),
    )
    run_id = row.workflow_id
    assert prepared.execute(db.session, core, {"workflow_id": run_id}).all() == [
        ("running",)
    ]


def test_a_parameter_left_out_takes_its_bound_value_or_is_named(psycopg2, db, sent_sql):
    """As SQLAlchemy binds them: a value bound in the statement, or an error."""
    statement = text("SELECT :a AS a, :b AS b").bindparams(
        bindparam("a"), bindparam("b", value="bound")
    )
    assert tuple(prepared.execute(db.session, statement, {"a": "given"}).one()) == (
        "given",
        "bound",
    )
    assert tuple(
        prepared.execute(db.session, statement, {"a": "x", "b": "y"}).one()
    ) == ("x", "y")
    bound = text("SELECT :b AS b").bindparams(bindparam("b", value="bound"))
    assert tuple(prepared.execute(db.session, bound, None).one()) == ("bound",)
    sent = list(sent_sql)
    with pytest.raises(InvalidRequestError, match="bind parameter 'a'") as error:
        prepared.execute(db.session, statement, {"b": "y"})
    assert error.value.__context__ is None  # SQLAlchemy's error, as it raises it
    assert sent_sql == sent  # refused before anything is sent


def test_a_parameter_is_converted_once(psycopg2, db):
    """A conversion's own error is raised as it is, after one call."""
    calls = []

    class Looked(TypeDecorator):
        impl = String
        cache_ok = True

        def process_bind_param(self, value, dialect):
            calls.append(value)
            return {"known": "found"}[value]

    statement = text("SELECT :a AS a").bindparams(bindparam("a", type_=Looked()))
    assert tuple(prepared.execute(db.session, statement, {"a": "known"}).one()) == (
        "found",
    )
    with pytest.raises(KeyError, match="unknown") as error:
        prepared.execute(db.session, statement, {"a": "unknown"})
    assert error.value.__context__ is None
    assert calls == ["known", "unknown"]


def test_prepared_rows_are_converted_as_the_session_converts_them(psycopg2, tasks, db):
    """UUIDs, JSON and timestamps come back typed, by column name and position."""
    task_id, _ = tasks[0]
    tasks_table = TaskRun.__table__
    statement = select(
        tasks_table.c.id,
        tasks_table.c.workflow_id,
        tasks_table.c.signature,
        tasks_table.c.queued_at,
        tasks_table.c.status,
    ).where(tasks_table.c.id == bindparam("task_id", type_=tasks_table.c.id.type))
    expected = db.session.execute(statement, {"task_id": task_id}).one()
    for _ in range(2):  # prepared, then executed by name
        row = prepared.execute(db.session, statement, {"task_id": task_id}).one()
        assert tuple(row) == tuple(expected)
        assert (row.id, row.signature, row.queued_at) == (
            expected.id,
            expected.signature,
            expected.queued_at,
        )
        assert isinstance(row.signature, dict)


def test_prepared_results_keep_the_result_api(psycopg2, tasks, db):
    statement = text(
        "SELECT id FROM wtflow_task WHERE position >= :least ORDER BY id"
    ).columns(id=TaskRun.id.type)
    many = prepared.execute(db.session, statement, {"least": 0})
    assert many.all() == db.session.execute(statement, {"least": 0}).all()
    assert len(many.all()) > 1
    with pytest.raises(MultipleResultsFound):
        many.one_or_none()
    none = prepared.execute(db.session, statement, {"least": 99})
    assert none.one_or_none() is None
    with pytest.raises(NoResultFound):
        none.one()


def test_prepared_statements_skip_the_sessions_textual_result(
    psycopg2, tasks, db, monkeypatch
):
    """The hot path's statements do not go through ``Session.execute``."""
    task_id, celery_id = tasks[0]

    def refuse(*args, **kwargs):
        raise AssertionError("Session.execute was used")

    monkeypatch.setattr(type(db.session()), "execute", refuse)
    assert orchestrator.claim(None, task_id, celery_id)


def test_two_statements_go_in_one_message(psycopg2_clean, clean):
    first = select(bindparam("a", type_=WorkflowRun.name.type).label("a"))
    second = select(bindparam("b", type_=WorkflowRun.name.type).label("b"))
    try:
        with count_statements(_db) as sent:
            rows = prepared.execute(
                _db.session, second, {"b": "y"}, before=(first, {"a": "x"})
            )
    finally:
        _db.session.rollback()
    assert [tuple(row) for row in rows] == [("y",)]
    assert len(sent) == 1 and sent[0].count("EXECUTE ") == 2


def test_two_statements_apart_are_refused_in_autocommit_mode(app, clean):
    if _db.engine.dialect.name != "postgresql":
        pytest.skip("autocommit messages are PostgreSQL's")
    app.config["WTFLOW_PREPARED_STATEMENTS"] = False
    try:
        lock = (select(text("1")), {})
        with prepared.alone(_db.session) as own:
            assert own is not None
            with pytest.raises(RuntimeError, match="would be two transactions"):
                prepared.execute(_db.session, select(text("2")), {}, lock, own)
    finally:
        app.config["WTFLOW_PREPARED_STATEMENTS"] = True
        _db.session.rollback()


@pytest.fixture()
def driver_sql(monkeypatch):
    """The prepared statements run through SQLAlchemy's ``exec_driver_sql``."""
    from sqlalchemy.engine import Connection

    sent, exec_driver_sql = [], Connection.exec_driver_sql

    def spy(self, statement, *args, **kwargs):
        sent.append(statement.split(None, 1)[0])
        return exec_driver_sql(self, statement, *args, **kwargs)

    monkeypatch.setattr(Connection, "exec_driver_sql", spy)
    return sent


def test_unwatched_statements_go_on_the_drivers_cursor(psycopg2, tasks, db, driver_sql):
    """Nothing listens to the engine's statements: ``EXECUTE`` skips
    SQLAlchemy's execution context (``PREPARE``, once, does not)."""
    for task_id, celery_id in tasks:
        assert orchestrator.claim(None, task_id, celery_id).id == task_id
    assert driver_sql == ["PREPARE"]


def test_a_cursor_listener_sees_every_statement(
    psycopg2, tasks, db, sent_sql, driver_sql
):
    for task_id, celery_id in tasks:
        assert orchestrator.claim(None, task_id, celery_id).id == task_id
    assert sent_sql == driver_sql == ["PREPARE", "EXECUTE", "EXECUTE"]


def test_an_unwatched_statement_fails_as_sqlalchemy_raises(psycopg2, db):
    """Wrapped, with the statement, and told to ``handle_error`` listeners
    (which do not turn the SQLAlchemy path on)."""
    handled = []

    def handle(context):
        handled.append(type(context.sqlalchemy_exception).__name__)

    divided = select((bindparam("n", type_=TaskRun.retries.type) / 0).label("q"))
    event.listen(db.engine, "handle_error", handle)
    try:
        with pytest.raises(DataError, match="division by zero") as raised:
            prepared.execute(db.session, divided, {"n": 1})
    finally:
        event.remove(db.engine, "handle_error", handle)
    assert raised.value.statement.startswith("EXECUTE wtflow_")
    assert raised.value.params["n"] == 1
    assert handled == ["DataError"]


@pytest.fixture()
def pooled(psycopg2_clean):
    """An engine of the test database with a pool of one connection."""
    import sqlalchemy as sa

    engine = sa.create_engine(_db.engine.url, pool_size=1)
    yield engine
    engine.dispose()


def test_an_unwatched_statement_on_a_lost_connection_invalidates_it(pooled):
    """The server ended the pooled session: the error is SQLAlchemy's, says
    the connection was invalidated (what :func:`~.orchestrator.atomic`
    retries on), and the pool connects again."""
    import psycopg2 as driver

    statement = select(bindparam("a", type_=WorkflowRun.name.type).label("a"))
    with pooled.connect() as connection:  # prepared while it lives
        assert prepared.execute(_db.session, statement, {"a": "x"}, None, connection)
        pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    url = pooled.url.set(drivername="postgresql")
    with driver.connect(url.render_as_string(hide_password=False)) as killer:
        killer.autocommit = True
        killer.cursor().execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pooled.connect() as connection:
        with pytest.raises(OperationalError) as raised:
            prepared.execute(_db.session, statement, {"a": "y"}, None, connection)
    assert raised.value.connection_invalidated
    assert raised.value.statement.startswith("EXECUTE wtflow_")
    with pooled.connect() as connection:
        assert connection.exec_driver_sql("SELECT pg_backend_pid()").scalar() != pid


@contextmanager
def autocommit(connection):
    """``connection`` in autocommit mode, as :func:`prepared.alone` gives it."""
    dbapi_connection = connection.connection.dbapi_connection
    dbapi_connection.autocommit = True
    try:
        yield connection
    finally:
        dbapi_connection.autocommit = False


def test_a_channel_a_wait_left_is_dropped_by_the_next_message(
    pooled, clean, monkeypatch
):
    """No round trip of its own: the ``UNLISTEN`` goes with the statement,
    and comes back if the statement fails (it was rolled back with it)."""
    monkeypatch.setattr(dispatch, "_send", lambda message: None)
    wf = Workflow.create("add-chain", start=True)
    orchestrator.atomic(orchestrator.stop, wf.id)
    assert waiting.wait(pooled, wf.id, timeout=5) == "cancelled"
    channel = waiting.run_channel(wf.id)
    value = select(bindparam("a", type_=WorkflowRun.name.type).label("a"))
    divided = select((bindparam("n", type_=TaskRun.retries.type) / 0).label("q"))
    with pooled.connect() as connection, autocommit(connection):
        assert connection.info[waiting.LISTENING] == channel
        assert listened(connection) == [channel]
        with pytest.raises(DataError):
            prepared.execute(_db.session, divided, {"n": 1}, None, connection)
        assert connection.info[waiting.LISTENING] == channel
        assert listened(connection) == [channel]
        sent = []
        event.listen(connection, "before_cursor_execute", lambda *a: sent.append(a[2]))
        rows = prepared.execute(_db.session, value, {"a": "x"}, None, connection)
        assert [tuple(row) for row in rows] == [("x",)]
        assert sent[-1].startswith(f"UNLISTEN {channel}; EXECUTE wtflow_")
        assert waiting.LISTENING not in connection.info
        assert listened(connection) == []


def test_a_message_alone_may_commit_without_waiting_for_its_flush(
    psycopg2_clean, clean
):
    """``SET LOCAL`` in the message itself: the statement runs with it, and
    the setting ends with the message. In the session's transaction it is
    not sent (it would hold for all of that transaction)."""
    setting = select(
        func.current_setting(bindparam("name", type_=WorkflowRun.name.type)).label(
            "setting"
        )
    )
    name = {"name": "synchronous_commit"}
    with sent_statements() as sent:
        with prepared.alone(_db.session) as own:
            during = prepared.execute(
                _db.session, setting, name, None, own, synchronous_commit=False
            ).one()
            after = prepared.execute(_db.session, setting, name, None, own).one()
        within = prepared.execute(
            _db.session, setting, name, synchronous_commit=False
        ).one()
        _db.session.rollback()
    assert (during.setting, after.setting, within.setting) == ("off", "on", "on")
    messages = [statement for statement, _ in sent]
    assert messages[0].startswith("SET LOCAL synchronous_commit TO off; EXECUTE ")
    assert [m.split(None, 1)[0] for m in messages[1:]] == ["EXECUTE", "EXECUTE"]


def caught_up_setting(connection, before=""):
    """The ``synchronous_commit`` a message beginning with the guard commits with.

    :param before: statements sent in the same message ahead of it.
    """
    guard = prepared._UNFLUSHED_IF_CAUGHT_UP
    with connection.connection.dbapi_connection.cursor() as cursor:
        cursor.execute(f"{before}{guard}SHOW synchronous_commit")
        return cursor.fetchone()[0]


def flushed_setting(connection):
    """:func:`caught_up_setting` once everything before is flushed.

    ``off`` if any of five tries gives it (another backend's WAL may come
    between the flush and the guard), else what the last one gave.
    """
    for _ in range(5):
        connection.exec_driver_sql(prepared._FLUSH)
        setting = caught_up_setting(connection)
        if setting == "off":
            break
    return setting


def test_a_message_commits_unflushed_only_once_earlier_commits_are_flushed(
    psycopg2_clean, clean
):
    """``IF_CAUGHT_UP``: ``off`` when the WAL is flushed up to the message,
    ``on`` when something before it is not flushed yet (here, a
    non-transactional logical message: written, never waited for). Sent
    alone, the claim of ``execute`` begins with it."""
    setting = select(
        func.current_setting(bindparam("name", type_=WorkflowRun.name.type)).label(
            "setting"
        )
    )
    unflushed = "SELECT pg_logical_emit_message(false, 'wtflow-test', 'x'); "
    with prepared.alone(_db.session) as own:
        assert caught_up_setting(own, unflushed) == "on"
        assert flushed_setting(own) == "off"
        with sent_statements() as sent:
            during = prepared.execute(
                _db.session,
                setting,
                {"name": "synchronous_commit"},
                None,
                own,
                synchronous_commit=prepared.IF_CAUGHT_UP,
            ).one()
    assert during.setting in ("on", "off")
    [(message, _)] = sent
    assert message.startswith(prepared._UNFLUSHED_IF_CAUGHT_UP + "EXECUTE ")


def test_await_flush_commits_one_wal_write_after_an_unflushed_commit(
    psycopg2_clean, clean
):
    """Nothing noted, nothing sent; noted, one transaction that writes a
    logical message (its commit waits for the WAL flush), alone or beside
    the session's transaction, which it leaves as it is."""
    flush = prepared._FLUSH
    with sent_statements() as sent:
        prepared.await_flush(_db.session)
        assert sent == []
        prepared.unflushed(_db.session)
        prepared.await_flush(_db.session)
        prepared.await_flush(_db.session)
        assert sent == [(flush, True)]  # alone
        _db.session.execute(text("SELECT 1"))  # the session's transaction
        prepared.unflushed(_db.session)
        prepared.await_flush(_db.session)
        assert sent == [(flush, True), ("SELECT 1", False), (flush, False)]
        assert _db.session().in_transaction()
        _db.session.rollback()
    assert prepared._UNFLUSHED not in _db.session.info


def test_the_wait_for_a_flush_drops_a_channel_a_wait_left(pooled, clean):
    from sqlalchemy.orm import Session

    session = Session(bind=pooled)
    with pooled.connect() as connection, autocommit(connection):
        connection.exec_driver_sql("LISTEN wtflow_run_left")
        connection.info[waiting.LISTENING] = "wtflow_run_left"
    prepared.unflushed(session)
    with sent_statements(pooled) as sent:
        prepared.await_flush(session)
    assert sent == [(f"UNLISTEN wtflow_run_left; {prepared._FLUSH}", True)]
    with pooled.connect() as connection:
        assert waiting.LISTENING not in connection.info
        assert listened(connection) == []
    session.close()


@contextmanager
def raising_in_the_driver(exception):
    """A parameter value whose adaptation by psycopg2 raises ``exception``."""
    from psycopg2.extensions import ISQLQuote, adapters, register_adapter

    class Interrupted:
        """A parameter whose adaptation is interrupted."""

    def interrupt(value):
        raise exception

    register_adapter(Interrupted, interrupt)
    try:
        yield Interrupted()
    finally:
        adapters.pop((Interrupted, ISQLQuote))


def test_a_non_driver_error_passes_through_unwrapped(psycopg2, db):
    """Celery's soft time limit, raised while the statement is sent, is not
    turned into a SQLAlchemy error (as through ``exec_driver_sql``)."""
    from celery.exceptions import SoftTimeLimitExceeded

    value = select(bindparam("a", type_=WorkflowRun.name.type).label("a"))
    with raising_in_the_driver(SoftTimeLimitExceeded()) as late:
        with pytest.raises(SoftTimeLimitExceeded):
            prepared.execute(db.session, value, {"a": late})


def test_an_exit_exception_invalidates_the_connection(pooled):
    """Interrupted while the statement is sent, the connection is in an
    unknown state: it is invalidated, as ``exec_driver_sql`` would, and the
    interruption raised as it is."""
    value = select(bindparam("a", type_=WorkflowRun.name.type).label("a"))
    with raising_in_the_driver(KeyboardInterrupt()) as interrupted:
        with pooled.connect() as connection:
            with pytest.raises(KeyboardInterrupt):
                prepared.execute(
                    _db.session, value, {"a": interrupted}, None, connection
                )
            assert connection.invalidated


def test_a_listener_of_one_connection_sees_its_statements(psycopg2_clean, clean):
    seen = []
    value = select(bindparam("a", type_=WorkflowRun.name.type).label("a"))

    def record(conn, cursor, statement, *args):
        seen.append(statement.split(None, 1)[0])

    with _db.engine.connect() as connection:
        event.listen(connection, "before_cursor_execute", record)
        prepared.execute(_db.session, value, {"a": "x"}, None, connection)
        prepared.execute(_db.session, value, {"a": "y"}, None, connection)
        connection.rollback()
    assert seen == ["PREPARE", "EXECUTE", "EXECUTE"]
