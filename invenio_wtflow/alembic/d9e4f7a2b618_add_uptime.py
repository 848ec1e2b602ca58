# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Add the uptime row: an UNLOGGED table that a crash of PostgreSQL empties."""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "d9e4f7a2b618"
down_revision = "b6d8e3a1c975"
branch_labels = ()
depends_on = None


def upgrade():
    """Upgrade database."""
    op.create_table(
        "wtflow_uptime",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_wtflow_uptime")),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE wtflow_uptime SET UNLOGGED")
        # No crash known: nothing queued so far is held back.
        op.execute("INSERT INTO wtflow_uptime (id, since) VALUES (1, 'epoch')")


def downgrade():
    """Downgrade database."""
    op.drop_table("wtflow_uptime")
