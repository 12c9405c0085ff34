"""federated: runs and rounds with lineage (digests, participants, refusals, DP epsilon)

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "fl_run",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("strategy", sa.String(32), nullable=False),
        sa.Column("secure_aggregation", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("num_rounds", sa.Integer(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("cohort", sa.JSON(), nullable=False),
        sa.Column("parent_digest", sa.String(64), nullable=False),
        sa.Column("final_digest", sa.String(64), nullable=False),
        sa.Column("epsilon", sa.Float(), nullable=False),
        sa.Column("delta", sa.Float(), nullable=False),
        sa.Column("detail", sa.String(512), nullable=False),
        sa.Column("created_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
    )
    op.create_table(
        "fl_round",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("server_round", sa.Integer(), nullable=False),
        sa.Column("sampled", sa.Integer(), nullable=False),
        sa.Column("results", sa.Integer(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("rejected", sa.JSON(), nullable=False),
        sa.Column("dropped", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("anomaly_scores", sa.JSON(), nullable=False),
        sa.Column("epsilon", sa.Float(), nullable=False),
        sa.Column("delta", sa.Float(), nullable=False),
        sa.Column("parent_digest", sa.String(64), nullable=False),
        sa.Column("arrays_digest", sa.String(64), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=False),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.UniqueConstraint("run_id", "server_round", name="uq_fl_round_run_round"),
    )
    op.create_index("ix_fl_round_run_id", "fl_round", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_fl_round_run_id", table_name="fl_round")
    op.drop_table("fl_round")
    op.drop_table("fl_run")
