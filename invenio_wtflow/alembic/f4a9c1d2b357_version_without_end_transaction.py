# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Version runs and tasks with Continuum's subquery strategy (no end_transaction_id)."""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "f4a9c1d2b357"
down_revision = "e7b2d4f6a813"
branch_labels = ()
depends_on = None

TABLES = ("wtflow_workflow_version", "wtflow_task_version")
"""The version tables of the runs and of the tasks."""


def upgrade():
    """Upgrade database."""
    for table in TABLES:
        op.drop_index(op.f(f"ix_{table}_end_transaction_id"), table_name=table)
        op.drop_column(table, "end_transaction_id")


def downgrade():
    """Downgrade database.

    The column comes back empty: the ``subquery`` strategy never wrote it, and
    the ``validity`` strategy treats an empty one as "still current" only for
    the newest version of a row, so fill it from the next version's
    transaction.
    """
    for table in TABLES:
        op.add_column(
            table, sa.Column("end_transaction_id", sa.BigInteger(), nullable=True)
        )
        op.create_index(
            op.f(f"ix_{table}_end_transaction_id"),
            table,
            ["end_transaction_id"],
            unique=False,
        )
        op.execute(
            f"UPDATE {table} AS v SET end_transaction_id = ("
            f"SELECT min(n.transaction_id) FROM {table} AS n "
            "WHERE n.id = v.id AND n.transaction_id > v.transaction_id)"
        )
