"""Certificate renewal over the authenticated channel, and promotion once the device uses the new one.

`renew_certificate` (called by device_session.py for `SyncRequest.renew`, on gRPC or MQTT) issues a
certificate for a new key and stores it as the device's *pending* certificate: the old one stays
valid (Sync accepts both fingerprints) until the device proves it switched. It never raises on bad
input: the reason is `RenewResponse.error` and nothing is issued.

`cert_promotion_observer` runs in the ingest flush transaction with the batch's reports: a report
whose `cert_fingerprint` equals the device's pending one makes the pending certificate current and
puts the old serial in `revoked_certificate` ("superseded"), so the next CRL refuses it at the
broker and the gRPC pin refuses it at once.

Does not own issuing (pki.py), the CRL file (crl.py) or when a device asks (agent/renewal.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from sqlalchemy import Connection, Engine, insert, select, update
from sqlmodel import Session

from fleet_server.errors import InvalidRequestError
from fleet_server.models import Device, RevokedCertificate, utcnow
from fleet_server.pki import FleetCA, expiry_from_serial
from protos.edgeloop.v1 import device_pb2 as pb

logger = logging.getLogger(__name__)

DEVICE_CERT_DAYS = 365  # = Settings.device_cert_days default, what enrollment issues
MAX_CSR_BYTES = 16 * 1024  # as enrollment
SUPERSEDED = "superseded"


def renew_certificate(
    engine: Engine,
    ca: FleetCA,
    device_id: str,
    csr_pem: bytes,
    *,
    days: int = DEVICE_CERT_DAYS,
    current_cert_pem: bytes | None = None,
) -> pb.RenewResponse:
    """Issue a pending certificate for `device_id` from `csr_pem`.

    Refused (error set, nothing stored): unknown or revoked device, an unparsable or badly signed
    CSR, a CSR whose CN is not `device_id`, or one for the key of the certificate in use
    (`current_cert_pem`, when the transport knows it: gRPC has the peer certificate; the MQTT
    bridge does not, the broker terminates TLS). A new renewal replaces an unused pending
    certificate, whose serial is revoked.
    """
    try:
        _check_csr(csr_pem, device_id, current_cert_pem)
    except InvalidRequestError as err:
        return pb.RenewResponse(error=str(err))
    with Session(engine, expire_on_commit=False) as session:
        device = session.get(Device, device_id, with_for_update=True)
        if device is None:
            return pb.RenewResponse(error=f"device {device_id!r} is not enrolled")
        if device.status != "active":
            return pb.RenewResponse(error=f"device {device_id!r} is {device.status}; enroll it again")
        try:
            issued = ca.sign_device_csr(csr_pem, device_id, days=days)
        except InvalidRequestError as err:
            return pb.RenewResponse(error=str(err))
        if device.pending_cert_serial:  # issued before, never used: it must not stay valid
            _supersede(session, device, device.pending_cert_serial, device.pending_cert_fingerprint)
        device.pending_cert_serial, device.pending_cert_fingerprint = issued.serial, issued.fingerprint
        session.add(device)
        session.commit()
    not_after = issued.not_after or datetime.now(UTC)
    logger.info("certificate renewed (pending) device_id=%s serial=%s", device_id, issued.serial)
    return pb.RenewResponse(
        certificate_chain_pem=issued.pem + ca.cert_pem,
        ca_certificate_pem=ca.cert_pem,
        not_after_ms=int(not_after.timestamp() * 1000),
    )


def _check_csr(
    csr_pem: bytes, device_id: str, current_cert_pem: bytes | None
) -> x509.CertificateSigningRequest:
    if len(csr_pem) > MAX_CSR_BYTES:
        raise InvalidRequestError(f"csr_pem larger than {MAX_CSR_BYTES} bytes")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as err:
        raise InvalidRequestError("csr_pem is not a PEM PKCS#10 request") from err
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or names[0].value != device_id:
        raise InvalidRequestError("the CSR's common name must be the device id")
    if current_cert_pem:
        current = x509.load_pem_x509_certificate(current_cert_pem)
        if _spki(current.public_key()) == _spki(csr.public_key()):
            raise InvalidRequestError("the CSR reuses the key of the certificate in use; make a new key")
    return csr


def _spki(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _supersede(session: Session, device: Device, serial: str, fingerprint: str) -> None:
    if serial and session.get(RevokedCertificate, serial) is None:
        session.add(
            RevokedCertificate(
                serial=serial,
                device_id=device.id,
                fingerprint=fingerprint,
                revoked_at=utcnow(),
                reason=SUPERSEDED,
            )
        )


class CertReport(Protocol):
    @property
    def device_id(self) -> str: ...
    @property
    def cert_fingerprint(self) -> str: ...


_device = Device.__table__  # type: ignore[attr-defined]
_revoked = RevokedCertificate.__table__  # type: ignore[attr-defined]


def promotion_observer(on_promoted: Callable[[], None]) -> Callable[[Connection, Sequence[CertReport]], None]:
    """`cert_promotion_observer` that also calls `on_promoted()` (e.g. `CrlPublisher.publish_soon`)
    when it promoted something, so the superseded serial reaches the broker's CRL."""

    def observe(conn: Connection, reports: Sequence[CertReport]) -> None:
        if promote(conn, reports):
            on_promoted()

    return observe


def cert_promotion_observer(conn: Connection, reports: Sequence[CertReport]) -> None:
    """An ingest report observer: `promote` (the CRL catches up at its next publish)."""
    promote(conn, reports)


def promote(conn: Connection, reports: Sequence[CertReport]) -> list[str]:
    """Promote pending certificates the reports show in use (inside the caller's transaction).

    Returns the ids of the devices promoted."""
    claimed = {r.device_id: r.cert_fingerprint for r in reports if r.cert_fingerprint}
    promoted: list[str] = []
    if not claimed:
        return promoted
    rows = conn.execute(
        select(
            _device.c.id, _device.c.cert_serial, _device.c.cert_fingerprint,
            _device.c.pending_cert_serial, _device.c.pending_cert_fingerprint,
        ).where(_device.c.id.in_(sorted(claimed)), _device.c.status == "active")
    ).all()  # fmt: skip
    now = utcnow()
    for row in rows:
        device_id, pending_fp = row.id, row.pending_cert_fingerprint
        if not pending_fp or claimed[device_id] != pending_fp:
            continue
        conn.execute(
            update(_device)
            .where(_device.c.id == device_id, _device.c.pending_cert_fingerprint == pending_fp)
            .values(
                cert_serial=row.pending_cert_serial,
                cert_fingerprint=pending_fp,
                cert_not_after=expiry_from_serial(row.pending_cert_serial),
                pending_cert_serial="",
                pending_cert_fingerprint="",
            )
        )
        if (
            row.cert_serial
            and not conn.execute(
                select(_revoked.c.serial).where(_revoked.c.serial == row.cert_serial)
            ).first()
        ):
            conn.execute(
                insert(_revoked).values(
                    serial=row.cert_serial, device_id=device_id, fingerprint=row.cert_fingerprint,
                    revoked_at=now, reason=SUPERSEDED,
                )
            )  # fmt: skip
        promoted.append(device_id)
        logger.info("renewed certificate in use device_id=%s serial=%s", device_id, row.pending_cert_serial)
    return promoted
