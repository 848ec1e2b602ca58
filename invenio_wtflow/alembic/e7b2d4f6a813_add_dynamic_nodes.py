# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Record nodes added at run time and the root orchestrator's requests."""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "e7b2d4f6a813"
down_revision = "a3c5e9d1f042"
branch_labels = ()
depends_on = None

COUNTERS = ("orchestration_requests", "orchestrations")
"""Integer columns of the root's orchestrator bookkeeping."""

TIMES = ("orchestration_queued_at", "orchestration_requested_at")
"""Timestamp columns of the root's orchestrator bookkeeping."""


def upgrade():
    """Upgrade database."""
    op.add_column("wtflow_task", sa.Column("kind", sa.String(16), nullable=True))
    op.add_column("wtflow_task", sa.Column("node_key", sa.String(64), nullable=True))
    op.create_unique_constraint(
        "uq_wtflow_task_node_key",
        "wtflow_task",
        ["workflow_id", "node_key"],
    )
    for column in COUNTERS:
        # Existing runs start at 0; the model sets it for new rows.
        op.add_column(
            "wtflow_workflow",
            sa.Column(column, sa.Integer(), nullable=False, server_default="0"),
        )
        op.alter_column("wtflow_workflow", column, server_default=None)
    for column in TIMES:
        op.add_column(
            "wtflow_workflow",
            sa.Column(column, sa.DateTime(timezone=True), nullable=True),
        )


def downgrade():
    """Downgrade database."""
    for column in reversed(COUNTERS + TIMES):
        op.drop_column("wtflow_workflow", column)
    op.drop_constraint("uq_wtflow_task_node_key", "wtflow_task", type_="unique")
    op.drop_column("wtflow_task", "node_key")
    op.drop_column("wtflow_task", "kind")
