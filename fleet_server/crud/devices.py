"""Device registry: enrollment records, labels, observed state, telemetry reads."""

from __future__ import annotations

import re
from collections.abc import Sequence

from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, col, select

from fleet_server.errors import ConflictError, InvalidRequestError, NotFoundError
from fleet_server.models import Device, TelemetryRecord, utcnow
from fleet_server.ota.models import UNHEALTHY_STATES, OtaDeviceStatus

DEVICE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,62}$")
LABEL_KEY_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._/-]{0,62}$")


def validate_device_id(device_id: str) -> None:
    if not DEVICE_ID_RE.fullmatch(device_id):  # `$` alone lets a trailing newline through
        raise InvalidRequestError(
            f"invalid device id {device_id!r}: 2-63 chars of a-z, 0-9, '.', '_', '-', starting alphanumeric"
        )


def register_device(
    *,
    session: Session,
    device_id: str,
    profile: str,
    labels: dict[str, str],
    agent_version: str,
    cert_serial: str,
    cert_fingerprint: str,
) -> Device:
    """Create the device row (not committed). Re-enrolling a revoked id is refused.

    Raises:
        ConflictError: the id belongs to an active or revoked device.
    """
    if session.get(Device, device_id) is not None:
        raise ConflictError(f"device {device_id!r} is already enrolled")
    now = utcnow()
    device = Device(
        id=device_id,
        profile=profile,
        labels=dict(labels),
        agent_version=agent_version,
        cert_serial=cert_serial,
        cert_fingerprint=cert_fingerprint,
        enrolled_at=now,
    )
    session.add(device)
    return device


def get_device(*, session: Session, device_id: str) -> Device:
    device = session.get(Device, device_id)
    if device is None:
        raise NotFoundError(f"device {device_id!r} not found")
    _ota_health(session, [device])
    return device


def list_devices(
    *, session: Session, label: dict[str, str] | None = None, limit: int = 500, offset: int = 0
) -> list[Device]:
    rows = session.exec(select(Device).order_by(col(Device.id)).offset(offset).limit(limit)).all()
    if label:
        rows = [d for d in rows if all(d.labels.get(k) == v for k, v in label.items())]
    _ota_health(session, rows)
    return list(rows)


def _ota_health(session: Session, devices: Sequence[Device]) -> None:
    """A device whose latest OTA report (highest transition) is failed or refused is not ok in the
    API, with the reason, whatever its last device report said. Only the loaded objects change
    (`set_committed_value`: never written back)."""
    if not devices:
        return
    stmt = select(OtaDeviceStatus).where(
        col(OtaDeviceStatus.device_id).in_([d.id for d in devices]), col(OtaDeviceStatus.transition) > 0
    )
    latest: dict[str, OtaDeviceStatus] = {}
    for row in session.exec(stmt):
        if row.device_id not in latest or row.transition > latest[row.device_id].transition:
            latest[row.device_id] = row
    for device in devices:
        found = latest.get(device.id)
        if found is None or found.state not in UNHEALTHY_STATES:
            continue
        observed = dict(device.observed or {})
        if observed.get("health", "ok") in ("ok", "unknown"):
            observed["health"] = "degraded"
        reason = f"ota {found.state} in deployment {found.deployment_id}: {found.detail}"
        if reason in str(observed.get("health_detail", "")):
            continue  # already applied to this loaded object
        observed["health_detail"] = "; ".join(x for x in (observed.get("health_detail"), reason) if x)[:512]
        set_committed_value(device, "observed", observed)


def update_labels(*, session: Session, device_id: str, changes: dict[str, str | None]) -> Device:
    """Apply label changes and bump the desired-state generation so the agent re-reconciles."""
    device = get_device(session=session, device_id=device_id)
    labels = dict(device.labels)
    for key, value in changes.items():
        if not LABEL_KEY_RE.match(key):
            raise InvalidRequestError(f"invalid label key {key!r}")
        if value is None:
            labels.pop(key, None)
        elif len(value) > 253:
            raise InvalidRequestError(f"label {key!r} value longer than 253 characters")
        else:
            labels[key] = value
    device.labels = labels
    device.desired_generation += 1
    session.add(device)
    session.commit()
    session.refresh(device)
    return device


def list_telemetry(
    *, session: Session, device_id: str, after_seq: int = 0, limit: int = 100
) -> list[TelemetryRecord]:
    get_device(session=session, device_id=device_id)
    stmt = (
        select(TelemetryRecord)
        .where(TelemetryRecord.device_id == device_id, col(TelemetryRecord.seq) > after_seq)
        .order_by(col(TelemetryRecord.seq))
        .limit(limit)
    )
    return list(session.exec(stmt))
