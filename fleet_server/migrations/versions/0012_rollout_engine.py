"""rollouts: engine columns (releases per profile, pending effects, rollback releases, fencing
token; per-batch deployments; per-device release, deployment and previous release); a rollout
policy per registered model

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_LIST = sa.text("'[]'")
_DICT = sa.text("'{}'")


def upgrade() -> None:
    op.add_column("rollout", sa.Column("releases", sa.JSON(), nullable=False, server_default=_LIST))
    op.add_column("rollout", sa.Column("pending_effects", sa.JSON(), nullable=False, server_default=_LIST))
    op.add_column("rollout", sa.Column("rollback", sa.JSON(), nullable=False, server_default=_DICT))
    op.add_column("rollout", sa.Column("lease_token", sa.BigInteger(), nullable=False, server_default="0"))
    op.add_column("rollout_batch", sa.Column("deployments", sa.JSON(), nullable=False, server_default=_DICT))
    op.add_column("rollout_device", sa.Column("profile", sa.String(64), nullable=False, server_default=""))
    op.add_column("rollout_device", sa.Column("release_seq", sa.BigInteger(), nullable=True))
    op.add_column(
        "rollout_device", sa.Column("deployment_id", sa.String(64), nullable=False, server_default="")
    )
    op.add_column("rollout_device", sa.Column("previous_release_seq", sa.BigInteger(), nullable=True))
    op.add_column(
        "rollout_device",
        sa.Column("rollback_deployment_id", sa.String(64), nullable=False, server_default=""),
    )

    op.create_table(
        "rollout_policy",
        sa.Column("model_name", sa.String(128), primary_key=True),
        sa.Column("policy", sa.JSON(), nullable=False),
        sa.Column("updated_by", sa.String(128), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("rollout_policy")
    with op.batch_alter_table("rollout_device") as t:
        for name in (
            "rollback_deployment_id",
            "previous_release_seq",
            "deployment_id",
            "release_seq",
            "profile",
        ):
            t.drop_column(name)
    with op.batch_alter_table("rollout_batch") as t:
        t.drop_column("deployments")
    with op.batch_alter_table("rollout") as t:
        for name in ("lease_token", "rollback", "pending_effects", "releases"):
            t.drop_column(name)
