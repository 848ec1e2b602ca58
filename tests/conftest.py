# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Pytest fixtures: a light application on SQLite (or PostgreSQL)."""

import os

import pytest

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
