# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Pytest fixtures: a light application on SQLite (or PostgreSQL)."""

import os

import pytest
from celery import current_app as current_celery_app
from invenio_db import db as _db

from invenio_wtflow.engine import dispatch, orchestrator
from invenio_wtflow.models import UPTIME_ROW, Uptime

from .app import create_test_app
from .example_tasks import FARM, FARM_HOOKS
from .helpers import create_user


@pytest.fixture(scope="module")
def create_app():
    """Application factory for pytest-invenio."""
    return create_test_app


@pytest.fixture(scope="module")
def app(base_app, database):
    """Application with the database tables (no search needed)."""
    yield base_app


@pytest.fixture(scope="module")
def broker_uri():
    """One broker for every test app: Celery caches its connection pool.

    The integration tests' broker when set, else the in-memory transport.
    """
    return os.environ.get("WTFLOW_TEST_BROKER_URL", "memory://")


@pytest.fixture()
def users(app, db):
    """An admin (wtflow-admin action), a run's owner and another user."""
    return {
        "admin": create_user("admin", admin=True),
        "owner": create_user("owner"),
        "other": create_user("other"),
    }


@pytest.fixture()
def clean(app):
    """Leave no rows behind, for tests whose writes commit for real.

    Used with real workers and threads, which cannot share the ``db``
    fixture's rolled-back transaction.
    """
    yield
    _db.session.rollback()
    # Child runs point at the task that spawned them: unlink before deleting.
    _db.session.execute(_db.text("UPDATE wtflow_workflow SET parent_task_id = NULL"))
    for table in (
        "wtflow_task_dependency",
        "wtflow_task_delegation",
        "wtflow_task_version",
        "wtflow_workflow_version",
        "wtflow_task",
        "wtflow_workflow",
        "transaction",
        "access_actionsusers",
        "accounts_userrole",
        "accounts_user_session_activity",
        "accounts_useridentity",
        "accounts_user",
    ):
        _db.session.execute(_db.text(f'DELETE FROM "{table}"'))
    # The uptime row as the table's creation writes it: a test that removed
    # it (a crash) or moved it leaves no crash behind for the next sweeper.
    _db.session.execute(Uptime.__table__.delete())
    if _db.engine.dialect.name == "postgresql":
        _db.session.execute(_db.text(UPTIME_ROW))
    _db.session.commit()


class ManualBroker:
    """Keep published attempts and deliver them when the test says so."""

    def __init__(self):
        """Start empty."""
        self.messages = []

    def send(self, message):
        """Keep the message instead of sending it."""
        self.messages.append(message)
        return True

    def deliver(self, predicate=lambda message: True):
        """Run the kept attempts that match, in order (as a worker would)."""
        matching = [m for m in self.messages if predicate(m)]
        self.messages = [m for m in self.messages if not predicate(m)]
        for message in matching:
            current_celery_app.tasks[message.name].apply(
                args=message.args,
                kwargs={},
                task_id=message.celery_id,
                headers=message.headers,
                retries=message.retries,
                throw=False,
            )
        return len(matching)

    def deliver_all(self):
        """Run attempts until none is left."""
        while self.deliver():
            pass


@pytest.fixture()
def broker(monkeypatch):
    """A broker the test drives by hand."""
    manual = ManualBroker()
    monkeypatch.setattr(dispatch, "_send", manual.send)
    return manual


@pytest.fixture()
def farm():
    """The jobs the stand-in farm of delegated tasks received in this process."""
    FARM.clear()
    FARM_HOOKS.clear()
    yield FARM
    FARM.clear()
    FARM_HOOKS.clear()


@pytest.fixture()
def exclusive_calls(monkeypatch):
    """The successes recorded under the root lock (``orchestrator.succeed``)."""
    calls, succeed = [], orchestrator.succeed

    def spy(uow, task_id, *args, **kwargs):
        calls.append(task_id)
        return succeed(uow, task_id, *args, **kwargs)

    monkeypatch.setattr(orchestrator, "succeed", spy)
    return calls
