# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Link child workflows to the task that spawned them, record joins and slots."""

import sqlalchemy as sa
import sqlalchemy_utils
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision = "8d1f4c3a7e20"
down_revision = "5b8e0d2a9c41"
branch_labels = ()
depends_on = None

JSON = (
    sa.JSON()
    .with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
    .with_variant(sqlalchemy_utils.types.JSONType(), "sqlite")
)
UUID = sqlalchemy_utils.types.UUIDType()


def upgrade():
    """Upgrade database."""
    op.add_column("wtflow_workflow", sa.Column("parent_id", UUID, nullable=True))
    op.add_column("wtflow_workflow", sa.Column("parent_task_id", UUID, nullable=True))
    op.add_column(
        "wtflow_workflow", sa.Column("spawn_key", sa.String(255), nullable=True)
    )
    op.add_column(
        "wtflow_workflow", sa.Column("spawn_digest", sa.String(64), nullable=True)
    )
    op.add_column(
        "wtflow_workflow", sa.Column("spawn_index", sa.Integer(), nullable=True)
    )
    op.create_index(
        op.f("ix_wtflow_workflow_parent_id"), "wtflow_workflow", ["parent_id"]
    )
    op.create_foreign_key(
        op.f("fk_wtflow_workflow_parent_id_wtflow_workflow"),
        "wtflow_workflow",
        "wtflow_workflow",
        ["parent_id"],
        ["id"],
    )
    op.create_foreign_key(
        op.f("fk_wtflow_workflow_parent_task_id_wtflow_task"),
        "wtflow_workflow",
        "wtflow_task",
        ["parent_task_id"],
        ["id"],
    )
    op.create_unique_constraint(
        op.f("uq_wtflow_workflow_parent_task_id"),
        "wtflow_workflow",
        ["parent_task_id", "spawn_key"],
    )
    op.add_column("wtflow_task", sa.Column("joined", JSON, nullable=True))
    op.add_column(
        "wtflow_workflow", sa.Column("concurrency_key", sa.String(255), nullable=True)
    )
    op.add_column(
        "wtflow_workflow",
        sa.Column("slot_requested_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index(
        "ix_wtflow_workflow_concurrency",
        "wtflow_workflow",
        ["name", "concurrency_key", "status"],
    )


def downgrade():
    """Downgrade database."""
    op.drop_index("ix_wtflow_workflow_concurrency", table_name="wtflow_workflow")
    op.drop_column("wtflow_workflow", "slot_requested_at")
    op.drop_column("wtflow_workflow", "concurrency_key")
    op.drop_column("wtflow_task", "joined")
    op.drop_constraint(
        op.f("uq_wtflow_workflow_parent_task_id"), "wtflow_workflow", type_="unique"
    )
    op.drop_constraint(
        op.f("fk_wtflow_workflow_parent_task_id_wtflow_task"),
        "wtflow_workflow",
        type_="foreignkey",
    )
    op.drop_constraint(
        op.f("fk_wtflow_workflow_parent_id_wtflow_workflow"),
        "wtflow_workflow",
        type_="foreignkey",
    )
    op.drop_index(op.f("ix_wtflow_workflow_parent_id"), table_name="wtflow_workflow")
    for column in (
        "spawn_index",
        "spawn_digest",
        "spawn_key",
        "parent_task_id",
        "parent_id",
    ):
        op.drop_column("wtflow_workflow", column)
