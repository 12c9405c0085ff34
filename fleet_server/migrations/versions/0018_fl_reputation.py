"""per-device reputation of the robust federated defences, per model, kept across runs, server
restarts and runner replicas (issue 18; it lived in one process's memory)

Revision ID: 0018
Revises: 0017
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fl_reputation",
        sa.Column("model", sa.String(128), primary_key=True),
        sa.Column("node_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("fl_reputation")
