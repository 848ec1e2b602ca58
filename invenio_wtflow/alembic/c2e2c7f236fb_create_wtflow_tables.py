# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Create workflow, task and task dependency tables, with their versions."""

import sqlalchemy as sa
import sqlalchemy_utils
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision = "c2e2c7f236fb"
down_revision = None
branch_labels = ("invenio_wtflow",)
depends_on = "dbdbc1b19cf2"

JSON = (
    sa.JSON()
    .with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
    .with_variant(sqlalchemy_utils.types.JSONType(), "sqlite")
    .with_variant(sqlalchemy_utils.types.JSONType(), "mysql")
)
UUID = sqlalchemy_utils.types.UUIDType()
# invenio-db's UTCDateTime (and the columns of db.Timestamp) is a
# "TIMESTAMP WITH TIME ZONE".
DATETIME = sa.DateTime(timezone=True)


def upgrade():
    """Upgrade database."""
    op.create_table(
        "wtflow_workflow",
        sa.Column("id", UUID, nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=True),
        sa.Column("data", JSON, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("output", JSON, nullable=True),
        sa.Column("root_id", UUID, nullable=True),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("started_at", DATETIME, nullable=True),
        sa.Column("finished_at", DATETIME, nullable=True),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("created", DATETIME, nullable=False),
        sa.Column("updated", DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_wtflow_workflow")),
        sa.UniqueConstraint("name", "key", name=op.f("uq_wtflow_workflow_name")),
        sa.ForeignKeyConstraint(
            ["root_id"],
            ["wtflow_workflow.id"],
            name=op.f("fk_wtflow_workflow_root_id_wtflow_workflow"),
        ),
    )
    op.create_index(
        op.f("ix_wtflow_workflow_name"), "wtflow_workflow", ["name"], unique=False
    )
    op.create_index(
        op.f("ix_wtflow_workflow_status"), "wtflow_workflow", ["status"], unique=False
    )
    op.create_index(
        op.f("ix_wtflow_workflow_created_by"),
        "wtflow_workflow",
        ["created_by"],
        unique=False,
    )

    op.create_table(
        "wtflow_task",
        sa.Column("id", UUID, nullable=False),
        sa.Column("workflow_id", UUID, nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("signature", JSON, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("celery_id", sa.String(length=36), nullable=True),
        sa.Column("retries", sa.Integer(), nullable=False),
        sa.Column("remaining", sa.Integer(), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("progress", sa.Float(), nullable=True),
        sa.Column("result", JSON, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("traceback", sa.Text(), nullable=True),
        sa.Column("queued_at", DATETIME, nullable=True),
        sa.Column("started_at", DATETIME, nullable=True),
        sa.Column("finished_at", DATETIME, nullable=True),
        sa.Column("created", DATETIME, nullable=False),
        sa.Column("updated", DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_wtflow_task")),
        sa.UniqueConstraint(
            "workflow_id", "position", name=op.f("uq_wtflow_task_workflow_id")
        ),
        sa.UniqueConstraint("celery_id", name=op.f("uq_wtflow_task_celery_id")),
        sa.ForeignKeyConstraint(
            ["workflow_id"],
            ["wtflow_workflow.id"],
            name=op.f("fk_wtflow_task_workflow_id_wtflow_workflow"),
        ),
    )
    op.create_index(
        op.f("ix_wtflow_task_workflow_id"),
        "wtflow_task",
        ["workflow_id"],
        unique=False,
    )
    op.create_index(
        op.f("ix_wtflow_task_status"), "wtflow_task", ["status"], unique=False
    )

    op.create_table(
        "wtflow_task_dependency",
        sa.Column("task_id", UUID, nullable=False),
        sa.Column("depends_on_id", UUID, nullable=False),
        sa.PrimaryKeyConstraint(
            "task_id", "depends_on_id", name=op.f("pk_wtflow_task_dependency")
        ),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["wtflow_task.id"],
            name=op.f("fk_wtflow_task_dependency_task_id_wtflow_task"),
        ),
        sa.ForeignKeyConstraint(
            ["depends_on_id"],
            ["wtflow_task.id"],
            name=op.f("fk_wtflow_task_dependency_depends_on_id_wtflow_task"),
        ),
    )
    op.create_index(
        op.f("ix_wtflow_task_dependency_depends_on_id"),
        "wtflow_task_dependency",
        ["depends_on_id"],
        unique=False,
    )

    # SQLAlchemy-Continuum version tables: every column of the model but the
    # primary key is nullable, unique constraints and foreign keys are not
    # copied (indexes are), and the version columns are added.
    op.create_table(
        "wtflow_workflow_version",
        sa.Column("id", UUID, autoincrement=False, nullable=False),
        sa.Column("name", sa.String(length=255), autoincrement=False, nullable=True),
        sa.Column("key", sa.String(length=255), autoincrement=False, nullable=True),
        sa.Column("data", JSON, autoincrement=False, nullable=True),
        sa.Column("status", sa.String(length=16), autoincrement=False, nullable=True),
        sa.Column("message", sa.Text(), autoincrement=False, nullable=True),
        sa.Column("output", JSON, autoincrement=False, nullable=True),
        sa.Column("root_id", UUID, autoincrement=False, nullable=True),
        sa.Column("created_by", sa.Integer(), autoincrement=False, nullable=True),
        sa.Column("started_at", DATETIME, autoincrement=False, nullable=True),
        sa.Column("finished_at", DATETIME, autoincrement=False, nullable=True),
        sa.Column("version_id", sa.Integer(), autoincrement=False, nullable=True),
        sa.Column("created", DATETIME, autoincrement=False, nullable=True),
        sa.Column("updated", DATETIME, autoincrement=False, nullable=True),
        sa.Column(
            "transaction_id", sa.BigInteger(), autoincrement=False, nullable=False
        ),
        sa.Column("end_transaction_id", sa.BigInteger(), nullable=True),
        sa.Column("operation_type", sa.SmallInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "id", "transaction_id", name=op.f("pk_wtflow_workflow_version")
        ),
    )
    for column in (
        "name",
        "status",
        "created_by",
        "transaction_id",
        "end_transaction_id",
        "operation_type",
    ):
        op.create_index(
            op.f(f"ix_wtflow_workflow_version_{column}"),
            "wtflow_workflow_version",
            [column],
            unique=False,
        )

    # ``remaining`` (the join counter) is excluded from versioning.
    op.create_table(
        "wtflow_task_version",
        sa.Column("id", UUID, autoincrement=False, nullable=False),
        sa.Column("workflow_id", UUID, autoincrement=False, nullable=True),
        sa.Column("position", sa.Integer(), autoincrement=False, nullable=True),
        sa.Column("name", sa.String(length=255), autoincrement=False, nullable=True),
        sa.Column("signature", JSON, autoincrement=False, nullable=True),
        sa.Column("status", sa.String(length=16), autoincrement=False, nullable=True),
        sa.Column("attempt", sa.Integer(), autoincrement=False, nullable=True),
        sa.Column(
            "celery_id", sa.String(length=36), autoincrement=False, nullable=True
        ),
        sa.Column("retries", sa.Integer(), autoincrement=False, nullable=True),
        sa.Column("message", sa.Text(), autoincrement=False, nullable=True),
        sa.Column("progress", sa.Float(), autoincrement=False, nullable=True),
        sa.Column("result", JSON, autoincrement=False, nullable=True),
        sa.Column("error", sa.Text(), autoincrement=False, nullable=True),
        sa.Column("traceback", sa.Text(), autoincrement=False, nullable=True),
        sa.Column("queued_at", DATETIME, autoincrement=False, nullable=True),
        sa.Column("started_at", DATETIME, autoincrement=False, nullable=True),
        sa.Column("finished_at", DATETIME, autoincrement=False, nullable=True),
        sa.Column("created", DATETIME, autoincrement=False, nullable=True),
        sa.Column("updated", DATETIME, autoincrement=False, nullable=True),
        sa.Column(
            "transaction_id", sa.BigInteger(), autoincrement=False, nullable=False
        ),
        sa.Column("end_transaction_id", sa.BigInteger(), nullable=True),
        sa.Column("operation_type", sa.SmallInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "id", "transaction_id", name=op.f("pk_wtflow_task_version")
        ),
    )
    for column in (
        "workflow_id",
        "status",
        "transaction_id",
        "end_transaction_id",
        "operation_type",
    ):
        op.create_index(
            op.f(f"ix_wtflow_task_version_{column}"),
            "wtflow_task_version",
            [column],
            unique=False,
        )


def downgrade():
    """Downgrade database."""
    op.drop_table("wtflow_task_version")
    op.drop_table("wtflow_workflow_version")
    op.drop_table("wtflow_task_dependency")
    op.drop_table("wtflow_task")
    op.drop_table("wtflow_workflow")
