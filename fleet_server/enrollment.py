"""Enrollment: bootstrap token + CSR → device certificate, in one transaction.

The token is burned only if the device row is created and the certificate issued; a failure
anywhere rolls all of it back, so an operator never has to mint a new token for a server error.
The caller is unauthenticated until the token checks out: the device id is checked (length,
control characters, the id pattern) before anything else, and errors never echo more than a
bounded, escaped piece of it.

A revoked device id may enroll again only with a bootstrap token created after its revocation
(so a token that leaked before it cannot bring the device back): the row is reused, with the new
certificate, status active and revoked_at cleared, and the re-enrollment is audited.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlmodel import Session

from fleet_server.audit.chain import Actor, Target
from fleet_server.audit.port import AuditRecorder, record_change
from fleet_server.crud.devices import register_device, validate_device_id
from fleet_server.crud.tokens import consume_bootstrap_token
from fleet_server.desired import DesiredState, desired_for
from fleet_server.errors import AuthError, ConflictError, InvalidRequestError
from fleet_server.logsafe import text as safe_text
from fleet_server.models import BootstrapToken, Device, as_utc, utcnow
from fleet_server.pki import FleetCA, IssuedCertificate
from fleet_server.settings import Settings

logger = logging.getLogger(__name__)

MAX_DEVICE_ID = 63
MAX_LABEL_FIELD = 64  # profile, agent_version


@dataclass(frozen=True)
class EnrollmentResult:
    device_id: str
    certificate_chain_pem: bytes
    ca_certificate_pem: bytes
    desired: DesiredState


def enroll_device(
    *,
    engine: Engine,
    ca: FleetCA,
    settings: Settings,
    bootstrap_token: str,
    csr_pem: bytes,
    device_id: str,
    profile: str,
    agent_version: str,
    audit: AuditRecorder | None = None,
) -> EnrollmentResult:
    """Raises: AuthError (token), InvalidRequestError (id/CSR), ConflictError (id taken)."""
    check_caller_text(device_id=device_id, profile=profile, agent_version=agent_version)
    validate_device_id(device_id)
    if len(csr_pem) > 16 * 1024:
        raise InvalidRequestError("csr_pem larger than 16 KiB")
    with Session(engine, expire_on_commit=False) as session:
        token = consume_bootstrap_token(
            session=session, token=bootstrap_token, device_id=device_id, profile=profile
        )
        if token.revoked_at is not None:
            raise AuthError(f"bootstrap token {token.id} was revoked")
        issued = ca.sign_device_csr(csr_pem, device_id, days=settings.device_cert_days)
        existing = session.get(Device, device_id)
        reenrolled = existing is not None and existing.status == "revoked"
        if existing is not None and reenrolled:
            device = _reenroll(existing, token, profile=profile, agent_version=agent_version, issued=issued)
            session.add(device)
        else:
            device = register_device(
                session=session,
                device_id=device_id,
                profile=profile,
                labels=token.labels,
                agent_version=agent_version,
                cert_serial=issued.serial,
                cert_fingerprint=issued.fingerprint,
            )
        device.cert_not_after = issued.not_after
        try:
            session.commit()
        except SAIntegrityError as err:  # lost a race for the same device id
            session.rollback()
            raise ConflictError(f"device {device_id!r} is already enrolled") from err
        logger.info(
            "device enrolled device_id=%s profile=%s token_id=%s cert_serial=%s",
            device_id,
            safe_text(profile),
            token.id,
            issued.serial,
        )
        if reenrolled and audit is not None:
            record_change(
                audit, Actor.system("enrollment"), "device.reenrolled", Target("device", device_id),
                {"token_id": token.id, "cert_serial": issued.serial},
            )  # fmt: skip
        return EnrollmentResult(
            device_id=device_id,
            certificate_chain_pem=issued.pem + ca.cert_pem,
            ca_certificate_pem=ca.cert_pem,
            desired=desired_for(device, settings),
        )


def _reenroll(
    device: Device, token: BootstrapToken, *, profile: str, agent_version: str, issued: IssuedCertificate
) -> Device:
    """The revoked row, enrolled again. Raises AuthError: the token predates the revocation."""
    created, revoked_at = as_utc(token.created_at), as_utc(device.revoked_at)
    if created is None or revoked_at is None or created <= revoked_at:
        raise AuthError(
            f"device {device.id!r} was revoked; enrolling it again needs a bootstrap token created after that"
        )
    device.status, device.revoked_at = "active", None
    device.cert_serial, device.cert_fingerprint = issued.serial, issued.fingerprint
    device.pending_cert_serial = device.pending_cert_fingerprint = ""
    device.profile, device.labels, device.agent_version = profile, dict(token.labels), agent_version
    device.enrolled_at = utcnow()
    device.desired_generation += 1
    return device


def check_caller_text(*, device_id: str, profile: str, agent_version: str) -> None:
    """Refuse ids and labels no device would send: too long or with control characters.

    Raises: InvalidRequestError (the message names the field, never the raw value).
    """
    if len(device_id) > MAX_DEVICE_ID:
        raise InvalidRequestError(f"device id is {len(device_id)} chars; at most {MAX_DEVICE_ID} allowed")
    for name, value, limit in (
        ("device id", device_id, MAX_DEVICE_ID),
        ("profile", profile, MAX_LABEL_FIELD),
        ("agent_version", agent_version, MAX_LABEL_FIELD),
    ):
        if len(value) > limit:
            raise InvalidRequestError(f"{name} is {len(value)} chars; at most {limit} allowed")
        if not value.isprintable():
            raise InvalidRequestError(f"{name} contains control characters")
