# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Pytest fixtures: a light application on SQLite (or PostgreSQL)."""

import os

import pytest
from invenio_db import db as _db

from .app import create_test_app


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
    _db.session.commit()
