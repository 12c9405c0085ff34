"""ota: publish idempotency key and OTA access

Revision ID: 0007
Revises: 0006

`ota_release.idempotency_key` (unique; NULL for releases published without one) and
`request_sha256` (the request that key came with). OTA access needs no table: device tokens are
verified with a secret file (fleet_server.ota.access).
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ota_release") as batch:
        batch.add_column(sa.Column("idempotency_key", sa.String(128), nullable=True))
        batch.add_column(sa.Column("request_sha256", sa.String(64), nullable=False, server_default=""))
        batch.create_index("ix_ota_release_idempotency_key", ["idempotency_key"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("ota_release") as batch:
        batch.drop_index("ix_ota_release_idempotency_key")
        batch.drop_column("request_sha256")
        batch.drop_column("idempotency_key")
