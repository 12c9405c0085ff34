"""ota: publish idempotency key and OTA access (reserved)

Revision ID: 0007
Revises: 0006
"""

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # reserved; filled by the change that needs it


def downgrade() -> None:
    pass
