# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""After a crash of PostgreSQL, the sweeper holds back what was queued before it."""

import threading
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import delete, select, text

from invenio_wtflow import Workflow, current_wtflow
from invenio_wtflow.engine import dispatch
from invenio_wtflow.models import TaskRun, Uptime, utcnow

from .example_tasks import lost_once


@pytest.fixture()
def postgresql(db):
    """Skip unless the database is PostgreSQL (unlogged tables)."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("unlogged tables are PostgreSQL's")


@pytest.fixture()
def unflushed_claims(app, monkeypatch):
    """Claims commit unflushed, and a lease of three hours."""
    monkeypatch.setitem(app.config, "WTFLOW_CLAIM_SYNCHRONOUS_COMMIT", False)
    monkeypatch.setitem(app.config, "WTFLOW_TASK_LEASE", 3 * 3600)


@pytest.fixture()
def sent(monkeypatch):
    """The ids of the task runs whose attempts are published."""
    published = []
    monkeypatch.setattr(
        dispatch, "_send", lambda m: published.append(m.task_run_id) or True
    )
    return published


def queued(db, ago):
    """A run whose first attempt was queued ``ago`` and never claimed; its id."""
    task_id = Workflow.create("add-chain", start=True).tasks[0].id
    db.session.query(TaskRun).filter_by(id=task_id).update(
        {TaskRun.queued_at: utcnow() - ago}
    )
    db.session.commit()
    return str(task_id)


def crash(db):
    """Do to the uptime table what PostgreSQL's crash recovery does: empty it."""
    db.session.execute(delete(Uptime))
    db.session.commit()


def noticed(db, ago):
    """Move back when the sweeper noticed the crash."""
    db.session.query(Uptime).update({Uptime.since: utcnow() - ago})
    db.session.commit()


def test_the_uptime_table_is_created_unlogged_with_its_row(postgresql, db):
    """(pytest-invenio creates every table unlogged: made logged first.)"""
    persistence = text(
        "SELECT relpersistence FROM pg_class WHERE relname = 'wtflow_uptime'"
    )
    connection = db.session.connection()
    connection.execute(text("ALTER TABLE wtflow_uptime SET LOGGED"))
    connection.execute(text("DELETE FROM wtflow_uptime"))
    assert connection.execute(persistence).scalar_one() == "p"
    Uptime.__table__.dispatch.after_create(Uptime.__table__, connection)
    assert connection.execute(persistence).scalar_one() == "u"
    assert connection.execute(text("SELECT id FROM wtflow_uptime")).all() == [(1,)]


def test_after_a_crash_attempts_queued_before_it_are_held_back_for_a_lease(
    postgresql, db, unflushed_claims, sent, caplog
):
    hour = timedelta(hours=1)
    before = queued(db, 2 * hour)
    crash(db)
    sent.clear()
    assert dispatch.requeue_stale(older_than=60) == 0
    assert sent == []
    assert "recovered from a crash" in caplog.text
    noticed(db, 1.5 * hour)
    after = queued(db, hour)  # queued once the crash was noticed
    sent.clear()
    assert dispatch.requeue_stale(older_than=60) == 1
    assert sent == [after]
    noticed(db, 3 * hour + timedelta(seconds=1))  # a lease later
    sent.clear()
    assert dispatch.requeue_stale(older_than=60) == 1
    assert sent == [before]


def test_no_attempt_is_held_back_without_a_crash(
    postgresql, db, unflushed_claims, sent
):
    """The row written with the table holds back nothing, even in the
    table's first minutes."""
    task_id = queued(db, timedelta(minutes=5))
    sent.clear()
    assert dispatch.requeue_stale(older_than=60) == 1
    assert sent == [task_id]


@pytest.mark.parametrize(
    "setting",
    ["WTFLOW_CLAIM_SYNCHRONOUS_COMMIT", "WTFLOW_PREPARED_STATEMENTS"],
    ids=["synchronous-claims", "no-prepared-statements"],
)
def test_claims_that_wait_for_their_flush_hold_nothing_back(
    postgresql, db, sent, app, monkeypatch, setting
):
    """Claims wait for their flush when asked to, or without prepared
    statements (they are sent in the session's transaction). The row is
    written all the same: choosing unflushed claims later does not look
    like a crash."""
    monkeypatch.setitem(
        app.config, setting, setting == "WTFLOW_CLAIM_SYNCHRONOUS_COMMIT"
    )
    task_id = queued(db, timedelta(hours=1))
    crash(db)
    sent.clear()
    assert dispatch.requeue_stale(older_than=60) == 1
    assert sent == [task_id]
    assert len(db.session.execute(select(Uptime.since)).all()) == 1


def test_a_task_is_held_back_for_its_own_lease(postgresql, db, unflushed_claims, sent):
    """``lost_once`` has a lease of two seconds, ``add`` the configured
    three hours."""
    current_wtflow.register("short-lease", lost_once.si(marker_dir="unused"))
    short = Workflow.create("short-lease", start=True).tasks[0].id
    db.session.query(TaskRun).filter_by(id=short).update(
        {TaskRun.queued_at: utcnow() - timedelta(hours=1)}
    )
    long = queued(db, timedelta(hours=1))
    crash(db)
    dispatch.requeue_stale(older_than=60)
    noticed(db, timedelta(seconds=3))
    sent.clear()
    assert dispatch.requeue_stale(older_than=60) == 1
    assert sent == [str(short)] and long not in sent


def test_the_table_is_created_with_its_row(postgresql, db):
    [(since,)] = db.session.execute(select(Uptime.since)).all()
    assert since == datetime(1970, 1, 1, tzinfo=timezone.utc)  # no crash known


@pytest.mark.parametrize("round_", range(5))
def test_sweepers_finding_the_row_gone_at_once_agree(
    app, clean, unflushed_claims, sent, caplog, round_
):
    """Eight sweepers, each with its own connection, find the uptime row gone
    at the same moment: one row is written, one warning logged, and every
    sweeper holds back the attempt queued before the crash."""
    from invenio_db import db as _db

    if _db.engine.dialect.name != "postgresql":
        pytest.skip("unlogged tables are PostgreSQL's")
    task_id = queued(_db, timedelta(hours=1))
    crash(_db)
    sent.clear()
    sweepers = 8
    barrier = threading.Barrier(sweepers)
    published, errors = [], []

    def sweep():
        with app.app_context():
            try:
                barrier.wait(timeout=30)
                published.append(dispatch.requeue_stale(older_than=60))
            except Exception as error:  # reported below
                errors.append(error)
            finally:
                _db.session.remove()

    threads = [threading.Thread(target=sweep) for _ in range(sweepers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == [] and published == [0] * sweepers
    assert task_id not in sent
    assert len(_db.session.execute(select(Uptime.since)).all()) == 1
    assert caplog.text.count("The uptime row was gone") == 1
