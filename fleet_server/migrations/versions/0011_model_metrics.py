"""rollouts: live model metric windows reported by devices (reserved)

Revision ID: 0011
Revises: 0010
"""

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # reserved; filled by the change that needs it


def downgrade() -> None:
    pass
