"""SQLModel tables and API schemas (Base / table / Public, as in the FastAPI template).

Owns the shape of persisted fleet state. Does not own queries (crud/) or the migration history
(migrations/, which must be changed together with this file).
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, DateTime, Dialect, Integer, LargeBinary, UniqueConstraint
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp column that always reads back as an aware UTC datetime, on every backend.

    SQLite keeps no offset (it returns naive values) and PostgreSQL answers in the session's time
    zone, so the API would serialize the same instant differently. Values are written in UTC (a
    naive value is taken to be UTC already) and read back with ``tzinfo=UTC``.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _ts(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=Column(UtcDateTime(), nullable=nullable))


# ---------------------------------------------------------------- devices


class DeviceBase(SQLModel):
    profile: str = ""
    labels: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class Device(DeviceBase, table=True):
    __tablename__ = "device"

    id: str = Field(primary_key=True, max_length=128)
    status: str = Field(default="active", max_length=16)  # active | revoked
    cert_serial: str = Field(default="", max_length=64)
    cert_fingerprint: str = Field(default="", max_length=64)
    agent_version: str = Field(default="", max_length=64)
    enrolled_at: datetime | None = _ts()
    first_seen_at: datetime | None = _ts()
    last_seen_at: datetime | None = _ts()
    observed: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    desired_generation: int = Field(default=1, sa_column=Column(BigInteger, nullable=False, default=1))
    telemetry_dropped_total: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    transport: str = Field(default="", max_length=8)  # "grpc" | "mqtt": how its last report came
    cert_not_after: datetime | None = _ts()
    # Renewal: a certificate issued over the authenticated channel, valid for Sync until the device
    # reports it in use; then it replaces cert_fingerprint/cert_serial (certs/renewal.py).
    pending_cert_serial: str = Field(default="", max_length=64)
    pending_cert_fingerprint: str = Field(default="", max_length=64)
    revoked_at: datetime | None = _ts()
    # Denormalised from `observed` by every stored report (fleetview/columns.py, migration 0014), so
    # the fleet view filters, sorts and counts by them in SQL: the running model ("name@version",
    # "" when none) and the health the device reported ("ok" | "degraded" | "failing" | "unknown").
    model: str = Field(default="", max_length=200, index=True)
    reported_health: str = Field(default="", max_length=16)


class DevicePublic(DeviceBase):
    id: str
    status: str
    agent_version: str
    enrolled_at: datetime | None
    first_seen_at: datetime | None
    last_seen_at: datetime | None
    observed: dict[str, Any]
    desired_generation: int
    telemetry_dropped_total: int
    transport: str = ""
    cert_not_after: datetime | None = None
    revoked_at: datetime | None = None
    online: bool = False


def device_public(device: Device, online: Collection[str]) -> DevicePublic:
    """The API's view of a device row; `online`: ids with a gRPC Sync session or MQTT status "online"."""
    return DevicePublic(
        id=device.id,
        profile=device.profile,
        labels=device.labels,
        status=device.status,
        agent_version=device.agent_version,
        enrolled_at=as_utc(device.enrolled_at),
        first_seen_at=as_utc(device.first_seen_at),
        last_seen_at=as_utc(device.last_seen_at),
        observed=device.observed,
        desired_generation=device.desired_generation,
        telemetry_dropped_total=device.telemetry_dropped_total,
        transport=device.transport,
        cert_not_after=as_utc(device.cert_not_after),
        revoked_at=as_utc(device.revoked_at),
        online=device.id in online,
    )


class DeviceLabelsUpdate(SQLModel):
    """Set (value is a string) or remove (value is null) labels."""

    labels: dict[str, str | None]


# ---------------------------------------------------------------- telemetry


class TelemetryRecord(SQLModel, table=True):
    __tablename__ = "telemetry_record"
    __table_args__ = (UniqueConstraint("device_id", "seq", name="uq_telemetry_device_seq"),)

    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    )
    device_id: str = Field(index=True, max_length=128)
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    timestamp_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    kind: str = Field(default="", max_length=64)
    metrics: dict[str, float] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    payload: bytes = Field(default=b"", sa_column=Column(LargeBinary, nullable=False))
    received_at: datetime | None = _ts()


class TelemetryPublic(SQLModel):
    seq: int
    timestamp_ms: int
    kind: str
    metrics: dict[str, float]
    payload_bytes: int
    received_at: datetime | None


# ---------------------------------------------------------------- tokens


class BootstrapToken(SQLModel, table=True):
    __tablename__ = "bootstrap_token"

    id: str = Field(primary_key=True, max_length=32)
    secret_hash: str = Field(max_length=64, index=True, unique=True)
    labels: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    profile: str = Field(default="", max_length=64)  # "" = any profile
    created_by: str = Field(default="", max_length=64)
    created_at: datetime | None = _ts()
    expires_at: datetime | None = _ts(nullable=False)
    used_at: datetime | None = _ts()
    used_by_device: str = Field(default="", max_length=128)
    revoked_at: datetime | None = _ts()


class BootstrapTokenCreate(SQLModel):
    labels: dict[str, str] = Field(default_factory=dict)
    profile: str = ""
    ttl_s: int = Field(default=24 * 3600, ge=60, le=30 * 24 * 3600)


class BootstrapTokenPublic(SQLModel):
    id: str
    labels: dict[str, str]
    profile: str
    created_by: str
    created_at: datetime | None
    expires_at: datetime | None
    used_at: datetime | None
    used_by_device: str
    revoked_at: datetime | None = None


class BootstrapTokenCreated(BootstrapTokenPublic):
    token: str  # shown once; only its hash is stored


class OperatorToken(SQLModel, table=True):
    __tablename__ = "operator_token"

    id: str = Field(primary_key=True, max_length=32)
    name: str = Field(max_length=64)
    role: str = Field(max_length=16)  # viewer | operator | admin
    secret_hash: str = Field(max_length=64, index=True, unique=True)
    created_at: datetime | None = _ts()
    revoked_at: datetime | None = _ts()
    expires_at: datetime | None = _ts()  # None = no expiry
    last_used_at: datetime | None = _ts()
    created_by: str = Field(default="", max_length=64)
    rotated_from: str = Field(default="", max_length=32)


# ---------------------------------------------------------------- certificates


class RevokedCertificate(SQLModel, table=True):
    """A device certificate the fleet CA no longer honours: the source of the CRL the broker reads."""

    __tablename__ = "revoked_certificate"

    serial: str = Field(primary_key=True, max_length=64)  # hex, as in Device.cert_serial
    device_id: str = Field(index=True, max_length=128)
    fingerprint: str = Field(default="", max_length=64)
    revoked_at: datetime | None = _ts(nullable=False)
    reason: str = Field(default="", max_length=256)


# Tables of capability packages that no route imports yet: registered here for Alembic and tests.
import fleet_server.coordination.models  # noqa: E402
import fleet_server.rollouts.models  # noqa: E402, F401
