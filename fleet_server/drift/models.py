"""Drift tables and API schemas: episodes and mergeable sketches per device.

Owns the persisted shape of drift telemetry (migration 0002_drift must change with this file).
Does not own decoding (observer.py) or fleet-level judgement (analysis.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Float, Integer, UniqueConstraint
from sqlmodel import Field, SQLModel

from fleet_server.models import _ts


class DriftEpisodeRow(SQLModel, table=True):
    __tablename__ = "drift_episode"
    __table_args__ = (
        UniqueConstraint("device_id", "monitor_id", "episode_id", name="uq_drift_episode_device_monitor_id"),
    )

    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    )
    device_id: str = Field(index=True, max_length=128)
    monitor_id: str = Field(max_length=32)
    episode_id: int = Field(sa_column=Column(BigInteger, nullable=False))
    stream: str = Field(max_length=16)
    state: str = Field(max_length=16)  # open | closed
    model_name: str = Field(default="", max_length=128)
    model_version: str = Field(default="", max_length=64)
    start_sample: int = Field(sa_column=Column(BigInteger, nullable=False))
    detected_sample: int = Field(sa_column=Column(BigInteger, nullable=False))
    end_sample: int = Field(sa_column=Column(BigInteger, nullable=False))
    samples_seen: int = Field(sa_column=Column(BigInteger, nullable=False))
    opened_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    closed_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    severity: float = Field(sa_column=Column(Float, nullable=False))
    budget_per_10k: float = Field(sa_column=Column(Float, nullable=False))
    signature: str = Field(max_length=32)
    features: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    evidence: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    last_seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    updated_at: datetime | None = _ts()


class DriftSketchRow(SQLModel, table=True):
    __tablename__ = "drift_sketch"
    __table_args__ = (UniqueConstraint("device_id", "seq", name="uq_drift_sketch_device_seq"),)

    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    )
    device_id: str = Field(index=True, max_length=128)
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    monitor_id: str = Field(max_length=32)
    model_name: str = Field(default="", max_length=128)
    model_version: str = Field(default="", max_length=64)
    from_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    to_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    samples: int = Field(sa_column=Column(BigInteger, nullable=False))
    samples_total: int = Field(sa_column=Column(BigInteger, nullable=False))
    budget_per_10k: float = Field(sa_column=Column(Float, nullable=False))
    bins: dict[str, list[int]] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    bad_inputs: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class DriftEpisodePublic(SQLModel):
    id: int
    device_id: str
    monitor_id: str
    episode_id: int
    stream: str
    state: str
    model_name: str
    model_version: str
    start_sample: int
    detected_sample: int
    end_sample: int
    samples_seen: int
    opened_ms: int
    closed_ms: int
    severity: float
    budget_per_10k: float
    signature: str
    features: list[str]
    evidence: list[dict[str, Any]]
    classification: str = ""  # population_shift | device_anomaly | within_budget (cohort view)
