"""Revoking a device: the database change (`revoke_device`) and its effects after commit (`Revoker`).

`revoke_device` marks the device revoked and records its current and pending certificate serials in
`revoked_certificate` in one transaction, then appends an audit entry naming the operator. It is
idempotent: revoking a revoked device changes nothing and records nothing new.

`Revoker.revoke` runs it and then every `on_revoked` callback (each alone: one failing does not stop
the others, and none undoes the revocation). The composition root adds them in this order:
1. the CRL publisher (crl.py): the broker refuses new TLS connections with the certificate;
2. the session kicks: gRPC `SessionRegistry.kick` and `MqttBridge.kick` end live sessions, and the
   broker-level takeover (takeover.py) drops the device's MQTT connections; its automatic reconnect
   then fails against the new CRL. A gRPC reconnect is refused by the Sync status check.

Does not own the REST route (api/routes/certs.py) or re-enrollment (enrollment.py).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import Engine
from sqlmodel import Session

from fleet_server.audit.chain import Actor, Target
from fleet_server.audit.port import AuditRecorder, record_change
from fleet_server.errors import NotFoundError
from fleet_server.models import Device, RevokedCertificate, utcnow

logger = logging.getLogger(__name__)

OnRevoked = Callable[[str], Awaitable[None]]
EFFECT_TIMEOUT_S = 20.0
KICK_CODE = "PERMISSION_DENIED"
KICK_DETAIL = "device certificate revoked"


@dataclass(frozen=True)
class Revocation:
    device: Device
    changed: bool  # False: it was already revoked
    serials: list[str]


def revoke_device(
    engine: Engine, device_id: str, *, actor: Actor, reason: str, audit: AuditRecorder | None = None
) -> Revocation:
    """Revoke `device_id` (idempotent). Raises NotFoundError for an unknown id."""
    with Session(engine, expire_on_commit=False) as session:
        device = session.get(Device, device_id, with_for_update=True)
        if device is None:
            raise NotFoundError(f"device {device_id!r} not found")
        if device.status == "revoked":
            return Revocation(device, False, [])
        now = utcnow()
        serials = [s for s in (device.cert_serial, device.pending_cert_serial) if s]
        fingerprints = {
            device.cert_serial: device.cert_fingerprint,
            device.pending_cert_serial: device.pending_cert_fingerprint,
        }
        for serial in serials:
            if session.get(RevokedCertificate, serial) is None:
                session.add(
                    RevokedCertificate(
                        serial=serial, device_id=device_id, fingerprint=fingerprints[serial],
                        revoked_at=now, reason=reason[:256],
                    )
                )  # fmt: skip
        device.status, device.revoked_at = "revoked", now
        device.pending_cert_serial = device.pending_cert_fingerprint = ""
        session.add(device)
        session.commit()
    logger.warning("device revoked device_id=%s serials=%s by=%s", device_id, ",".join(serials), actor.name)
    if audit is not None:
        details = {"reason": reason[:256], "serials": serials}
        record_change(audit, actor, "device.revoked", Target("device", device_id), details)
    return Revocation(device, True, serials)


class Kicker(Protocol):
    """What H2's `SessionRegistry` and `MqttBridge` offer: end a device's live session."""

    def kick(self, device_id: str, code: str, detail: str) -> Any: ...


def kick_with(kicker: Kicker) -> OnRevoked:
    """An `on_revoked` callback calling `kicker.kick` (sync or async) with PERMISSION_DENIED."""

    async def _kick(device_id: str) -> None:
        result = kicker.kick(device_id, KICK_CODE, KICK_DETAIL)
        if inspect.isawaitable(result):
            await result

    return _kick


@dataclass
class Revoker:
    """Held in `app.state.revoker`; the REST route calls `revoke`."""

    engine: Engine
    audit: AuditRecorder | None = None
    on_revoked: list[OnRevoked] = field(default_factory=list)

    async def revoke(self, device_id: str, *, actor: Actor, reason: str) -> Revocation:
        revocation = await asyncio.to_thread(
            revoke_device, self.engine, device_id, actor=actor, reason=reason, audit=self.audit
        )
        await self.apply_effects(device_id)  # also on a repeat: an effect that failed before runs again
        return revocation

    async def apply_effects(self, device_id: str) -> None:
        """Run every callback in order; log (never raise) what failed."""
        for callback in self.on_revoked:
            name = getattr(callback, "__qualname__", type(callback).__name__)
            try:
                await asyncio.wait_for(callback(device_id), EFFECT_TIMEOUT_S)
            except Exception as err:  # each effect alone: the revocation itself has committed
                logger.error("revocation effect %s failed device_id=%s: %s: %s", name, device_id,
                             type(err).__name__, err)  # fmt: skip
