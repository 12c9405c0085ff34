"""audit and rollouts: hash-chained audit log (entries, chain head, head signatures); rollouts,
their batches, devices, device holds and gate results

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
GENESIS_HASH = "0" * 64


def upgrade() -> None:
    op.create_table(
        "audit_entry",
        sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("ts", TS, nullable=False),
        sa.Column("actor_kind", sa.String(16), nullable=False),
        sa.Column("actor_id", sa.String(128), nullable=False),
        sa.Column("actor_name", sa.String(128), nullable=False),
        sa.Column("actor_role", sa.String(16), nullable=False),
        sa.Column("action", sa.String(128), nullable=False),
        sa.Column("target_kind", sa.String(64), nullable=False),
        sa.Column("target_id", sa.String(256), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("source_ip", sa.String(64), nullable=False),
        sa.Column("source_agent", sa.String(256), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_audit_entry_action", "audit_entry", ["action"])
    head = op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.bulk_insert(head, [{"id": 1, "seq": 0, "hash": GENESIS_HASH}])
    op.create_table(
        "audit_signature",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("signature", sa.String(256), nullable=False),
        sa.Column("signed_at", TS, nullable=False),
    )
    _rollouts()


def _rollouts() -> None:
    big = sa.BigInteger()
    op.create_table(
        "rollout",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("release_seq", big, nullable=False),
        sa.Column("previous_release_seq", big, nullable=True),
        sa.Column("rollback_release_seq", big, nullable=True),
        sa.Column("selector", sa.JSON(), nullable=False),
        sa.Column("batch_spec", sa.JSON(), nullable=False),
        sa.Column("gates", sa.JSON(), nullable=False),
        sa.Column("on_breach", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("batch", sa.Integer(), nullable=False),
        sa.Column("batches", sa.Integer(), nullable=False),
        sa.Column("paused_from", sa.String(16), nullable=False),
        sa.Column("paused_by_breach", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.String(1024), nullable=False),
        sa.Column("transition", big, nullable=False),
        sa.Column("lease_owner", sa.String(64), nullable=False),
        sa.Column("lease_expires_at", TS, nullable=True),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", TS, nullable=True),
        sa.Column("updated_at", TS, nullable=True),
    )
    op.create_index("ix_rollout_state", "rollout", ["state"])
    op.create_table(
        "rollout_batch",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("rollout_id", sa.String(32), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("devices", sa.JSON(), nullable=False),
        sa.Column("assigned_at", TS, nullable=True),
        sa.Column("settled_at", TS, nullable=True),
        sa.Column("looks", sa.Integer(), nullable=False),
        sa.Column("gate_state", sa.JSON(), nullable=False),
        sa.UniqueConstraint("rollout_id", "index", name="uq_rollout_batch_index"),
    )
    op.create_index("ix_rollout_batch_rollout_id", "rollout_batch", ["rollout_id"])
    op.create_table(
        "rollout_device",
        sa.Column("rollout_id", sa.String(32), primary_key=True),
        sa.Column("device_id", sa.String(128), primary_key=True),
        sa.Column("batch", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("detail", sa.String(1024), nullable=False),
        sa.Column("updated_at", TS, nullable=True),
    )
    op.create_index("ix_rollout_device_device_id", "rollout_device", ["device_id"])
    op.create_table(
        "rollout_hold",
        sa.Column("device_id", sa.String(128), primary_key=True),
        sa.Column("rollout_id", sa.String(32), nullable=False),
    )
    op.create_index("ix_rollout_hold_rollout_id", "rollout_hold", ["rollout_id"])
    op.create_table(
        "rollout_gate_result",
        sa.Column("id", big.with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("rollout_id", sa.String(32), nullable=False),
        sa.Column("batch", sa.Integer(), nullable=False),
        sa.Column("look", sa.Integer(), nullable=False),
        sa.Column("gate", sa.String(64), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("statistic", sa.Float(), nullable=False),
        sa.Column("p_value", sa.Float(), nullable=False),
        sa.Column("e_value", sa.Float(), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("effect", sa.Float(), nullable=False),
        sa.Column("samples_canary", big, nullable=False),
        sa.Column("samples_control", big, nullable=False),
        sa.Column("devices_canary", sa.Integer(), nullable=False),
        sa.Column("devices_control", sa.Integer(), nullable=False),
        sa.Column("detail", sa.String(1024), nullable=False),
        sa.Column("evaluated_at", TS, nullable=True),
    )
    op.create_index("ix_rollout_gate_result_rollout_id", "rollout_gate_result", ["rollout_id"])


def downgrade() -> None:
    op.drop_index("ix_rollout_gate_result_rollout_id", table_name="rollout_gate_result")
    op.drop_table("rollout_gate_result")
    op.drop_index("ix_rollout_hold_rollout_id", table_name="rollout_hold")
    op.drop_table("rollout_hold")
    op.drop_index("ix_rollout_device_device_id", table_name="rollout_device")
    op.drop_table("rollout_device")
    op.drop_index("ix_rollout_batch_rollout_id", table_name="rollout_batch")
    op.drop_table("rollout_batch")
    op.drop_index("ix_rollout_state", table_name="rollout")
    op.drop_table("rollout")
    op.drop_table("audit_signature")
    op.drop_table("audit_head")
    op.drop_index("ix_audit_entry_action", table_name="audit_entry")
    op.drop_table("audit_entry")
