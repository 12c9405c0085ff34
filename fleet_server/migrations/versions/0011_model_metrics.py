"""rollouts: live model metric windows reported by devices (model_metric_window)

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    big = sa.BigInteger()
    flt = sa.Float()
    op.create_table(
        "model_metric_window",
        sa.Column("id", big.with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("seq", big, nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("model_sha256", sa.String(64), nullable=False),
        sa.Column("deployment_id", sa.String(64), nullable=False),
        sa.Column("window_start_ms", big, nullable=False),
        sa.Column("window_s", sa.Integer(), nullable=False),
        sa.Column("predictions", big, nullable=False),
        sa.Column("errors", big, nullable=False),
        sa.Column("confidence_hist", sa.JSON(), nullable=False),
        sa.Column("class_counts", sa.JSON(), nullable=False),
        sa.Column("confidence_sum", flt, nullable=False),
        sa.Column("confidence_sum_sq", flt, nullable=False),
        sa.Column("latency_p50_ms", flt, nullable=False),
        sa.Column("latency_p95_ms", flt, nullable=False),
        sa.Column("latency_sum_ms", flt, nullable=False),
        sa.Column("latency_sum_sq_ms", flt, nullable=False),
        sa.Column("latency_count", big, nullable=False),
        sa.Column("drift_score", flt, nullable=False),
        sa.Column("shadow_agreement", flt, nullable=False),
        sa.Column("shadow_samples", sa.Integer(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("device_id", "seq", name="uq_model_metric_window_device_seq"),
    )
    op.create_index("ix_model_metric_window_device_id", "model_metric_window", ["device_id"])
    op.create_index("ix_model_metric_window_model_sha256", "model_metric_window", ["model_sha256"])
    op.create_index("ix_model_metric_window_window_start_ms", "model_metric_window", ["window_start_ms"])
    op.create_index(
        "ix_model_metric_window_device_start", "model_metric_window", ["device_id", "window_start_ms"]
    )


def downgrade() -> None:
    op.drop_table("model_metric_window")
