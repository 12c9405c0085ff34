"""coordination: leases with fencing tokens, replica heartbeats, device presence (issue 16)

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "coordination_lease",
        sa.Column("name", sa.String(length=128), primary_key=True),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("token", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "server_replica",
        sa.Column("id", sa.String(length=128), primary_key=True),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "device_presence",
        sa.Column("device_id", sa.String(length=128), primary_key=True),
        sa.Column("transport", sa.String(length=8), nullable=False),
        sa.Column("replica_id", sa.String(length=128), nullable=True),
        sa.Column("since", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_device_presence_replica_id", "device_presence", ["replica_id"])


def downgrade() -> None:
    op.drop_index("ix_device_presence_replica_id", "device_presence")
    op.drop_table("device_presence")
    op.drop_table("server_replica")
    op.drop_table("coordination_lease")
