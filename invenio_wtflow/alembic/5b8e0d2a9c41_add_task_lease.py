# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Add the lease of running attempts (``wtflow_task.lease_expires_at``)."""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "5b8e0d2a9c41"
down_revision = "c2e2c7f236fb"
branch_labels = ()
depends_on = None


def upgrade():
    """Upgrade database."""
    op.add_column(
        "wtflow_task",
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade():
    """Downgrade database."""
    op.drop_column("wtflow_task", "lease_expires_at")
