"""initial: devices, telemetry, bootstrap and operator tokens

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "device",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("profile", sa.String(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("cert_serial", sa.String(64), nullable=False),
        sa.Column("cert_fingerprint", sa.String(64), nullable=False),
        sa.Column("agent_version", sa.String(64), nullable=False),
        sa.Column("enrolled_at", TS, nullable=True),
        sa.Column("first_seen_at", TS, nullable=True),
        sa.Column("last_seen_at", TS, nullable=True),
        sa.Column("observed", sa.JSON(), nullable=False),
        sa.Column("desired_generation", sa.BigInteger(), nullable=False),
        sa.Column("telemetry_dropped_total", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "telemetry_record",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("timestamp_ms", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("received_at", TS, nullable=True),
        sa.UniqueConstraint("device_id", "seq", name="uq_telemetry_device_seq"),
    )
    op.create_index("ix_telemetry_record_device_id", "telemetry_record", ["device_id"])
    op.create_table(
        "bootstrap_token",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("profile", sa.String(64), nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("created_at", TS, nullable=True),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("used_at", TS, nullable=True),
        sa.Column("used_by_device", sa.String(128), nullable=False),
    )
    op.create_index("ix_bootstrap_token_secret_hash", "bootstrap_token", ["secret_hash"], unique=True)
    op.create_table(
        "operator_token",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("created_at", TS, nullable=True),
        sa.Column("revoked_at", TS, nullable=True),
    )
    op.create_index("ix_operator_token_secret_hash", "operator_token", ["secret_hash"], unique=True)


def downgrade() -> None:
    op.drop_table("operator_token")
    op.drop_table("bootstrap_token")
    op.drop_table("telemetry_record")
    op.drop_table("device")
