# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Add the delegations of task attempts to external systems."""

import sqlalchemy as sa
import sqlalchemy_utils
from alembic import op

# revision identifiers, used by Alembic.
revision = "a3c5e9d1f042"
down_revision = "8d1f4c3a7e20"
branch_labels = ()
depends_on = None

UUID = sqlalchemy_utils.types.UUIDType()
DATETIME = sa.DateTime(timezone=True)


def upgrade():
    """Upgrade database."""
    op.create_table(
        "wtflow_task_delegation",
        sa.Column("task_id", UUID, nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("deadline", DATETIME, nullable=False),
        sa.Column("completion_digest", sa.String(length=64), nullable=True),
        sa.Column("completed_at", DATETIME, nullable=True),
        sa.Column("created", DATETIME, nullable=False),
        sa.Column("updated", DATETIME, nullable=False),
        sa.PrimaryKeyConstraint(
            "task_id", "attempt", name=op.f("pk_wtflow_task_delegation")
        ),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["wtflow_task.id"],
            name=op.f("fk_wtflow_task_delegation_task_id_wtflow_task"),
        ),
    )


def downgrade():
    """Downgrade database."""
    op.drop_table("wtflow_task_delegation")
