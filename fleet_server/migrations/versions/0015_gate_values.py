"""rollout gate results: the canary and control values of each look (arm means, the most-moved
bin's shares, the install failure rate), so the console plots canary against control per gate

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rollout_gate_result") as batch:
        batch.add_column(sa.Column("value_canary", sa.Float(), nullable=True))
        batch.add_column(sa.Column("value_control", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rollout_gate_result") as batch:
        batch.drop_column("value_control")
        batch.drop_column("value_canary")
