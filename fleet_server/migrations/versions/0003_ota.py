"""ota: release sequence and per-device deployment status

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "ota_release",
        sa.Column(
            "seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("target_path", sa.String(512), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("length", sa.BigInteger(), nullable=False),
        sa.Column("custom", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("created_at", TS, nullable=True),
    )
    op.create_index("ix_ota_release_model_name", "ota_release", ["model_name"])
    op.create_table(
        "ota_device_status",
        sa.Column("device_id", sa.String(128), primary_key=True),
        sa.Column("deployment_id", sa.String(64), primary_key=True),
        sa.Column("release_seq", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("detail", sa.String(1024), nullable=False),
        sa.Column("transition", sa.BigInteger(), nullable=False),
        sa.Column("report_seq", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", TS, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("ota_device_status")
    op.drop_index("ix_ota_release_model_name", "ota_release")
    op.drop_table("ota_release")
