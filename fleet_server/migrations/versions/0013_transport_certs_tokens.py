"""devices: transport of the last report, certificate expiry, pending (renewed) certificate,
revocation time; revoked certificates (the CRL's source); operator token expiry, last use,
creator and rotation; bootstrap token revocation

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("device", sa.Column("transport", sa.String(8), nullable=False, server_default=""))
    op.add_column("device", sa.Column("cert_not_after", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "device", sa.Column("pending_cert_serial", sa.String(64), nullable=False, server_default="")
    )
    op.add_column(
        "device", sa.Column("pending_cert_fingerprint", sa.String(64), nullable=False, server_default="")
    )
    op.add_column("device", sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "revoked_certificate",
        sa.Column("serial", sa.String(64), primary_key=True),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(256), nullable=False),
    )
    op.create_index("ix_revoked_certificate_device_id", "revoked_certificate", ["device_id"])
    op.add_column("operator_token", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("operator_token", sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("operator_token", sa.Column("created_by", sa.String(64), nullable=False, server_default=""))
    op.add_column(
        "operator_token", sa.Column("rotated_from", sa.String(32), nullable=False, server_default="")
    )
    op.add_column("bootstrap_token", sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("bootstrap_token") as t:
        t.drop_column("revoked_at")
    with op.batch_alter_table("operator_token") as t:
        for name in ("rotated_from", "created_by", "last_used_at", "expires_at"):
            t.drop_column(name)
    op.drop_index("ix_revoked_certificate_device_id", "revoked_certificate")
    op.drop_table("revoked_certificate")
    with op.batch_alter_table("device") as t:
        for name in (
            "revoked_at",
            "pending_cert_fingerprint",
            "pending_cert_serial",
            "cert_not_after",
            "transport",
        ):
            t.drop_column(name)
