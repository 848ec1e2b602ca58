# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Drop indexes nothing reads: copies on the version tables, and two covered ones.

Every status change inserts a version row and, the status being indexed,
a new entry in every index of the changed row's table: each index dropped
here is one insertion less per change. History reads versions by row in
transaction order (their primary key); a run's tasks are found through
``uq_wtflow_task_workflow_id`` (``workflow_id, position``), runs by name
through ``uq_wtflow_workflow_name`` (``name, key``).
"""

from alembic import op

# revision identifiers, used by Alembic.
revision = "b6d8e3a1c975"
down_revision = "f4a9c1d2b357"
branch_labels = ()
depends_on = None

DROPPED = (
    ("wtflow_task", "workflow_id"),
    ("wtflow_workflow", "name"),
    ("wtflow_task_version", "workflow_id"),
    ("wtflow_task_version", "status"),
    ("wtflow_workflow_version", "name"),
    ("wtflow_workflow_version", "status"),
    ("wtflow_workflow_version", "created_by"),
)
"""``(table, column)`` of each single-column index dropped."""


def upgrade():
    """Upgrade database."""
    for table, column in DROPPED:
        op.drop_index(op.f(f"ix_{table}_{column}"), table_name=table)


def downgrade():
    """Downgrade database."""
    for table, column in reversed(DROPPED):
        op.create_index(op.f(f"ix_{table}_{column}"), table, [column], unique=False)
