"""SQLModel tables of federated runs and rounds (lineage: run -> rounds -> model digests).

Changed together with migrations/versions/0004_federated.py and 0009_federated_terminal.py
(cancellation: who cancelled a run; its states are in lifecycle.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field, SQLModel

from fleet_server.models import UtcDateTime


def _ts() -> Any:  # read back as aware UTC on SQLite and PostgreSQL alike (the API shows the offset)
    return Field(default=None, sa_column=Column(UtcDateTime(), nullable=True))


def _json() -> Any:
    return Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class FlRun(SQLModel, table=True):
    __tablename__ = "fl_run"

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
