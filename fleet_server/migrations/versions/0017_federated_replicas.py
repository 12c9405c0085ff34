"""federated across replicas: one running run fleet-wide, runner lease token, run inputs, task
streams and the task/result relay between replicas, the persisted auto-retrain policy (issue 16)

Runs left `running` by the previous version are failed first ("server restarted mid-run", as its
own startup would have done): the partial unique index allows one running run at a time.

Revision ID: 0017
Revises: 0016
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

ONE_RUNNING = sa.text("status = 'running'")


def _ts(name: str) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), nullable=True)


def upgrade() -> None:
    op.execute(
        "UPDATE fl_run SET status = 'failed', detail = 'server restarted mid-run' WHERE status = 'running'"
    )
    with op.batch_alter_table("fl_run") as batch:
        batch.add_column(sa.Column("runner", sa.String(128), nullable=False, server_default=""))
        batch.add_column(sa.Column("lease_token", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("current_round", sa.Integer(), nullable=False, server_default="0"))
    op.create_index(
        "uq_fl_run_one_running",
        "fl_run",
        ["status"],
        unique=True,
        postgresql_where=ONE_RUNNING,
        sqlite_where=ONE_RUNNING,
    )
    op.create_table(
        "fl_run_input",
        sa.Column("run_id", sa.String(32), primary_key=True),
        sa.Column("arrays", sa.LargeBinary(), nullable=False),
        sa.Column("eligible", sa.JSON(), nullable=False),
    )
    op.create_table(
        "fl_attachment",
        sa.Column("device_id", sa.String(128), primary_key=True),
        sa.Column("replica_id", sa.String(128), nullable=False),
        sa.Column("epoch", sa.String(32), nullable=False),
        sa.Column("transport", sa.String(8), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        _ts("since"),
    )
    op.create_index("ix_fl_attachment_replica_id", "fl_attachment", ["replica_id"])
    op.create_table(
        "fl_relay",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("target", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("origin", sa.String(128), nullable=False),
        sa.Column("task_id", sa.String(64), nullable=False),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        _ts("created_at"),
    )
    op.create_index("ix_fl_relay_target", "fl_relay", ["target"])
    op.create_table(
        "fl_auto_retrain",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("interval_s", sa.Float(), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_by", sa.String(64), nullable=False),
        _ts("updated_at"),
        sa.Column("status", sa.JSON(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("fl_auto_retrain")
    op.drop_index("ix_fl_relay_target", "fl_relay")
    op.drop_table("fl_relay")
    op.drop_index("ix_fl_attachment_replica_id", "fl_attachment")
    op.drop_table("fl_attachment")
    op.drop_table("fl_run_input")
    op.drop_index("uq_fl_run_one_running", "fl_run")
    with op.batch_alter_table("fl_run") as batch:
        batch.drop_column("current_round")
        batch.drop_column("lease_token")
        batch.drop_column("runner")
