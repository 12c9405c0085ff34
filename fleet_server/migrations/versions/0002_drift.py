"""drift: episodes and mergeable sketches per device

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "drift_episode",
        sa.Column("id", PK, primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("monitor_id", sa.String(32), nullable=False),
        sa.Column("episode_id", sa.BigInteger(), nullable=False),
        sa.Column("stream", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("start_sample", sa.BigInteger(), nullable=False),
        sa.Column("detected_sample", sa.BigInteger(), nullable=False),
        sa.Column("end_sample", sa.BigInteger(), nullable=False),
        sa.Column("samples_seen", sa.BigInteger(), nullable=False),
        sa.Column("opened_ms", sa.BigInteger(), nullable=False),
        sa.Column("closed_ms", sa.BigInteger(), nullable=False),
        sa.Column("severity", sa.Float(), nullable=False),
        sa.Column("budget_per_10k", sa.Float(), nullable=False),
        sa.Column("signature", sa.String(32), nullable=False),
        sa.Column("features", sa.JSON(), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", TS, nullable=True),
        sa.UniqueConstraint(
            "device_id", "monitor_id", "episode_id", name="uq_drift_episode_device_monitor_id"
        ),
    )
    op.create_index("ix_drift_episode_device_id", "drift_episode", ["device_id"])
    op.create_table(
        "drift_sketch",
        sa.Column("id", PK, primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("monitor_id", sa.String(32), nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("from_ms", sa.BigInteger(), nullable=False),
        sa.Column("to_ms", sa.BigInteger(), nullable=False),
        sa.Column("samples", sa.BigInteger(), nullable=False),
        sa.Column("samples_total", sa.BigInteger(), nullable=False),
        sa.Column("budget_per_10k", sa.Float(), nullable=False),
        sa.Column("bins", sa.JSON(), nullable=False),
        sa.Column("bad_inputs", sa.JSON(), nullable=False),
        sa.UniqueConstraint("device_id", "seq", name="uq_drift_sketch_device_seq"),
    )
    op.create_index("ix_drift_sketch_device_id", "drift_sketch", ["device_id"])


def downgrade() -> None:
    op.drop_table("drift_sketch")
    op.drop_table("drift_episode")
