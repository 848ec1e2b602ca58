# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""The alembic recipes create exactly the tables the models declare."""

import os
import uuid

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from invenio_db import db
from invenio_db.utils import alembic_test_context
from sqlalchemy.engine import make_url
from sqlalchemy_utils.functions import create_database, drop_database

from .app import create_test_app

DATABASE_URI = os.environ.get("SQLALCHEMY_DATABASE_URI", "")

pytestmark = pytest.mark.skipif(
    not DATABASE_URI.startswith("postgresql"),
    reason="alembic recipes are tested on PostgreSQL only "
    "(set SQLALCHEMY_DATABASE_URI=postgresql+psycopg2://...)",
)

TABLES = {
    "wtflow_workflow",
    "wtflow_workflow_version",
    "wtflow_task",
    "wtflow_task_version",
    "wtflow_task_dependency",
    "wtflow_task_delegation",
    "wtflow_uptime",
}
"""The tables of this package."""


@pytest.fixture()
def migration_app():
    """An application on a fresh, empty database, dropped afterwards."""
    url = make_url(DATABASE_URI)
    url = url.set(database=f"{url.database}_alembic_{uuid.uuid4().hex[:8]}")
    uri = url.render_as_string(hide_password=False)
    create_database(uri)
    app = create_test_app(
        SQLALCHEMY_DATABASE_URI=uri,
        ALEMBIC_CONTEXT={**alembic_test_context(), "compare_type": True},
    )
    try:
        yield app
    finally:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()
        drop_database(uri)


def table_of(diff):
    """Return the name of the table an autogenerate difference is about."""
    if isinstance(diff, list):  # modify_* differences come grouped per column
        diff = diff[0]
    operation, *args = diff
    if operation in ("add_column", "remove_column") or operation.startswith("modify_"):
        return args[1]  # (schema, table name, ...)
    obj = args[0]
    return obj.name if isinstance(obj, sa.Table) else obj.table.name


def wtflow_diff(alembic):
    """Return the differences between the database and the models' tables."""
    diffs = compare_metadata(alembic.migration_context, db.metadata)
    return [diff for diff in diffs if table_of(diff) in TABLES]


def table_names():
    """Return the names of the tables in the database."""
    return set(sa.inspect(db.engine).get_table_names())


def unlogged():
    """Return the names of the unlogged tables in the database."""
    query = "SELECT relname FROM pg_class WHERE relkind = 'r' AND relpersistence = 'u'"
    with db.engine.connect() as connection:
        return set(connection.exec_driver_sql(query).scalars())


def test_alembic(migration_app):
    """Upgrade creates the models' tables; downgrading the branch drops them."""
    alembic = migration_app.extensions["invenio-db"].alembic

    with migration_app.app_context():
        assert not table_names()
        alembic.upgrade()
    with migration_app.app_context():
        assert TABLES <= table_names()
        assert wtflow_diff(alembic) == []
        if "wtflow_task" in unlogged():  # pytest-invenio's hook makes all so
            assert "wtflow_uptime" in unlogged()
        else:
            assert unlogged() == {"wtflow_uptime"}
        uptime = sa.text("SELECT id, since = 'epoch' FROM wtflow_uptime")
        assert db.session.execute(uptime).all() == [(1, True)]  # no crash known

    with migration_app.app_context():
        alembic.downgrade(target="invenio_wtflow@base")
    with migration_app.app_context():
        assert not TABLES & table_names()
        assert "transaction" in table_names()
        assert not any(
            script.branch_labels & {"invenio_wtflow"} for script in alembic.current()
        )

    # The downgrade left nothing behind that would stop a new upgrade.
    with migration_app.app_context():
        alembic.upgrade("invenio_wtflow@head")
    with migration_app.app_context():
        assert wtflow_diff(alembic) == []
