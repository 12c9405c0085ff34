"""federated: cancellation and terminal reasons (who cancelled a run; reasons stay in `detail`)

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("fl_run") as batch:
        batch.add_column(sa.Column("cancelled_by", sa.String(64), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("fl_run") as batch:
        batch.drop_column("cancelled_by")
