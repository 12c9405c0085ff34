"""OTA tables: releases (the release sequence) and per-device deployment status.

The signed truth of what a device should run is the TUF repository; these rows are the operator's
index of it and the status each device reported. Changed together with migration 0003.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Integer
from sqlmodel import Field, SQLModel

from fleet_server.models import _ts


class OtaRelease(SQLModel, table=True):
    __tablename__ = "ota_release"

    seq: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    )
    model_name: str = Field(max_length=128, index=True)
    model_version: str = Field(max_length=64)
    target_path: str = Field(max_length=512)
    sha256: str = Field(max_length=64)
    length: int = Field(sa_column=Column(BigInteger, nullable=False))
    custom: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    drift_reference_sha256: str = Field(default="", max_length=64, sa_column_kwargs={"server_default": ""})
    created_by: str = Field(default="", max_length=64)
    created_at: datetime | None = _ts()
    # Publish idempotency (migration 0007): the client's Idempotency-Key and the sha256 of the
    # request it came with; the same key again returns this row (same request) or 409 (another one).
    idempotency_key: str | None = Field(default=None, max_length=128, unique=True, index=True)
    request_sha256: str = Field(default="", max_length=64, sa_column_kwargs={"server_default": ""})


# States whose report makes the device's health not ok while it is the device's latest OTA status.
UNHEALTHY_STATES = frozenset({"failed", "refused"})


class OtaDeviceStatus(SQLModel, table=True):
    """Latest reported state of one device in one deployment (highest transition number wins)."""

    __tablename__ = "ota_device_status"

    device_id: str = Field(primary_key=True, max_length=128)
    deployment_id: str = Field(primary_key=True, max_length=64)
    release_seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    state: str = Field(default="assigned", max_length=32)
    event: str = Field(default="", max_length=64)
    detail: str = Field(default="", max_length=1024)
    transition: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    report_seq: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    updated_at: datetime | None = _ts()


class ReleaseCreate(SQLModel):
    """A release from blobs already uploaded (`PUT /api/v1/ota/blobs`)."""

    model_name: str = Field(min_length=1, max_length=128, regex=r"^[A-Za-z0-9._-]+$")
    model_version: str = Field(min_length=1, max_length=64)
    artifact_sha256: str = Field(min_length=64, max_length=64)
    filename: str = Field(default="model.onnx", max_length=128, regex=r"^[A-Za-z0-9._-]+$")
    profiles: list[str] = Field(default_factory=list)
    runtime: dict[str, str] = Field(default_factory=dict)
    compiler_report_sha256: str = ""
    golden_sha256: str = ""
    golden_threshold: float = Field(default=0.0, ge=0.0, le=1.0)
    gates: dict[str, float] = Field(default_factory=dict)
    drift_reference_sha256: str = ""  # drift_reference.json for the on-device monitor (a blob)
    warmup_sha256: str = ""  # warm-up sample (.npz, one array per input) the device loads the model with


class ReleasePublic(SQLModel):
    seq: int
    model_name: str
    model_version: str
    target_path: str
    sha256: str
    length: int
    custom: dict[str, Any]
    drift_reference_sha256: str
    created_by: str
    created_at: datetime | None


class DeploymentCreate(SQLModel):
    device_ids: list[str] = Field(min_length=1, max_length=10000)


class DeviceStatusPublic(SQLModel):
    device_id: str
    deployment_id: str
    release_seq: int
    state: str
    event: str
    detail: str
    transition: int
    updated_at: datetime | None
