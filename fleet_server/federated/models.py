"""SQLModel tables of federated runs and rounds (lineage: run -> rounds -> model digests).

Changed together with migrations/versions/0004_federated.py, 0009_federated_terminal.py
(cancellation: who cancelled a run; its states are in lifecycle.py) and 0017_federated_replicas.py
(replicas: at most one `running` run fleet-wide, who runs it under which lease token, the run's
inputs for the runner replica, task streams and the task/result relay between replicas, the
persisted auto-retrain policy) and 0018_fl_reputation.py (per-device reputation of the robust
defences, kept per model across runs, server restarts and runner replicas).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, Integer, LargeBinary, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from fleet_server.models import UtcDateTime


def _ts() -> Any:  # read back as aware UTC on SQLite and PostgreSQL alike (the API shows the offset)
    return Field(default=None, sa_column=Column(UtcDateTime(), nullable=True))


def _json() -> Any:
    return Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


_RELAY_ID = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements INTEGER keys only
ONE_RUNNING = "status = 'running'"  # the partial unique index: one running run fleet-wide


class FlRun(SQLModel, table=True):
    __tablename__ = "fl_run"
    __table_args__ = (
        Index(
            "uq_fl_run_one_running",
            "status",
            unique=True,
            postgresql_where=text(ONE_RUNNING),
            sqlite_where=text(ONE_RUNNING),
        ),
    )

    id: str = Field(primary_key=True, max_length=32)
    strategy: str = Field(max_length=32)
    secure_aggregation: bool = False
    status: str = Field(default="running", max_length=16)  # lifecycle.RunStatus
    num_rounds: int
    config: dict[str, Any] = _json()
    cohort: dict[str, Any] = _json()
    parent_digest: str = Field(default="", max_length=64)
    final_digest: str = Field(default="", max_length=64)
    epsilon: float = 0.0
    delta: float = 0.0
    detail: str = Field(default="", max_length=512)  # the reason a run failed / was cancelled, or a note
    cancelled_by: str = Field(default="", max_length=64)  # operator name ("" unless cancelled)
    created_at: datetime | None = _ts()
    finished_at: datetime | None = _ts()
    runner: str = Field(default="", max_length=128)  # replica executing it; "" = waiting for the runner
    lease_token: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    current_round: int = 0  # the round in progress (0 = not started): named in a takeover's reason


class FlRound(SQLModel, table=True):
    __tablename__ = "fl_round"
    __table_args__ = (UniqueConstraint("run_id", "server_round", name="uq_fl_round_run_round"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(max_length=32, index=True)
    server_round: int
    sampled: int = 0
    results: int = 0
    failures: int = 0
    rejected: dict[str, Any] = _json()
    dropped: dict[str, Any] = _json()
    metrics: dict[str, Any] = _json()
    anomaly_scores: dict[str, Any] = _json()
    epsilon: float = 0.0
    delta: float = 0.0
    parent_digest: str = Field(default="", max_length=64)
    arrays_digest: str = Field(default="", max_length=64)
    duration_s: float = 0.0
    started_at: datetime | None = _ts()
    finished_at: datetime | None = _ts()


class FlRunInput(SQLModel, table=True):
    """What the runner replica needs to execute a run recorded on any replica."""

    __tablename__ = "fl_run_input"

    run_id: str = Field(primary_key=True, max_length=32)
    arrays: bytes = Field(sa_column=Column(LargeBinary, nullable=False))  # initial model, .npz
    eligible: dict[str, Any] = _json()  # the cohort filter (cohort.CohortSpec fields) or {"devices": [...]}


class FlAttachment(SQLModel, table=True):
    """A device's open task stream: which replica holds it (fleet-wide `get_node_ids`)."""

    __tablename__ = "fl_attachment"

    device_id: str = Field(primary_key=True, max_length=128)
    replica_id: str = Field(max_length=128, index=True)
    epoch: str = Field(max_length=32)  # one per stream: a re-attached device is a new stream
    transport: str = Field(default="grpc", max_length=8)
    state: dict[str, Any] = _json()
    since: datetime | None = _ts()


class FlRelay(SQLModel, table=True):
    """A task for a device whose stream another replica holds, or a result for the runner replica."""

    __tablename__ = "fl_relay"

    id: int | None = Field(
        default=None,
        sa_column=Column(
            BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
    )
    target: str = Field(max_length=128, index=True)  # replica that must act on it
    kind: str = Field(max_length=8)  # "task" | "result" | "offline"
    origin: str = Field(default="", max_length=128)  # replica that wrote it
    task_id: str = Field(max_length=64)
    device_id: str = Field(max_length=128)
    payload: bytes = Field(sa_column=Column(LargeBinary, nullable=False))  # TrainTask / TaskResult bytes
    created_at: datetime | None = _ts()


class FlAutoRetrain(SQLModel, table=True):
    """The drift-triggered retraining policy (one row, `name` = "default"), and its holder's status."""

    __tablename__ = "fl_auto_retrain"

    name: str = Field(primary_key=True, max_length=32)
    enabled: bool = False
    interval_s: float = 30.0
    request: dict[str, Any] = _json()  # the RunRequest body
    version: int = 0  # bumped at every change: the trigger holder reloads when it moves
    updated_by: str = Field(default="", max_length=64)
    updated_at: datetime | None = _ts()
    status: dict[str, Any] = _json()  # the trigger holder's counters (checks, errors, last run)


class FlReputation(SQLModel, table=True):
    """A device's reputation under the robust defences for one model: the running sum of its
    updates' agreement with the reference direction over every round of every run (reputation.py)."""

    __tablename__ = "fl_reputation"

    model: str = Field(primary_key=True, max_length=128)
    node_id: int = Field(
        sa_column=Column(BigInteger, primary_key=True, autoincrement=False)
    )  # grid.node_id_for
    score: float = 0.0
    updated_at: datetime | None = _ts()
