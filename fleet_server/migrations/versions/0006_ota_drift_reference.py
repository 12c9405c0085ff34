"""ota: the drift reference shipped with a release (sha256 of its blob; '' when none)

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ota_release") as batch:
        batch.add_column(
            sa.Column("drift_reference_sha256", sa.String(64), nullable=False, server_default="")
        )


def downgrade() -> None:
    with op.batch_alter_table("ota_release") as batch:
        batch.drop_column("drift_reference_sha256")
