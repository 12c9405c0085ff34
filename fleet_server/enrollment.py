"""Enrollment: bootstrap token + CSR → device certificate, in one transaction.

The token is burned only if the device row is created and the certificate issued; a failure
anywhere rolls all of it back, so an operator never has to mint a new token for a server error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlmodel import Session

from fleet_server.crud.devices import register_device, validate_device_id
from fleet_server.crud.tokens import consume_bootstrap_token
from fleet_server.desired import DesiredState, desired_for
from fleet_server.errors import ConflictError, InvalidRequestError
from fleet_server.pki import FleetCA
from fleet_server.settings import Settings

logger = logging.getLogger(__name__)


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
) -> EnrollmentResult:
    """Raises: AuthError (token), InvalidRequestError (id/CSR), ConflictError (id taken)."""
    validate_device_id(device_id)
    if len(csr_pem) > 16 * 1024:
        raise InvalidRequestError("csr_pem larger than 16 KiB")
    with Session(engine, expire_on_commit=False) as session:
        token = consume_bootstrap_token(
            session=session, token=bootstrap_token, device_id=device_id, profile=profile
        )
        issued = ca.sign_device_csr(csr_pem, device_id, days=settings.device_cert_days)
        device = register_device(
            session=session,
            device_id=device_id,
            profile=profile,
            labels=token.labels,
            agent_version=agent_version,
            cert_serial=issued.serial,
            cert_fingerprint=issued.fingerprint,
        )
        try:
            session.commit()
        except SAIntegrityError as err:  # lost a race for the same device id
            session.rollback()
            raise ConflictError(f"device {device_id!r} is already enrolled") from err
        logger.info(
            "device enrolled device_id=%s profile=%s token_id=%s cert_serial=%s",
            device_id,
            profile,
            token.id,
            issued.serial,
        )
        return EnrollmentResult(
            device_id=device_id,
            certificate_chain_pem=issued.pem + ca.cert_pem,
            ca_certificate_pem=ca.cert_pem,
            desired=desired_for(device, settings),
        )
