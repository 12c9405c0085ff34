"""Device certificate renewal: when to renew (pure) and how to swap the identity files (small IO).

The decision: renew when less than `renew_before_fraction` of the certificate's lifetime is left
(`renewal_due`), at most once per `retry_after_s` (a refused or lost request is retried later,
never in a tight loop). The session (`agent.sync`) sends `SyncRequest.renew` with a CSR for a NEW
key (`Renewer.start`); the old key and certificate stay in use until the server answers.

The swap (`install_renewed`): the current key and chain are copied to `*.prev`, the new key and
chain are staged (temp + fsync + rename each), then renamed over the current files. A crash at any
point leaves either the old pair or the new pair after `recover()` (called before the identity
is loaded), never a key that does not match its certificate. The `.prev` files are removed after
the next session in which the server acked a report (`forget_previous`).

Also the identity's fingerprint: sha256 hex of the DER of the certificate in use, sent in every
DeviceReport so the server can promote a pending certificate.

Does not talk to the server (the session carries the CSR and the answer) and does not own the
identity layout (`agent.identity.IdentityStore` names the files).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent.errors import StorageError
from agent.fsutil import atomic_write, fsync_dir
from agent.identity import IdentityStore
from agent.state import CertificateRenewed

logger = logging.getLogger(__name__)

DEFAULT_FRACTION = 1 / 3
STAGED_KEY = "device.key.next"
STAGED_CERT = "device.pem.next"


@dataclass(frozen=True)
class Validity:
    not_before_ms: int
    not_after_ms: int


def renewal_due(
    validity: Validity,
    now_ms: int,
    *,
    fraction: float = DEFAULT_FRACTION,
    last_attempt_ms: int | None = None,
    retry_after_s: float = 600.0,
) -> bool:
    """True when less than `fraction` of the lifetime remains and no attempt was made recently."""
    if last_attempt_ms is not None and now_ms - last_attempt_ms < retry_after_s * 1000:
        return False
    lifetime = validity.not_after_ms - validity.not_before_ms
    if lifetime <= 0:
        return True
    return validity.not_after_ms - now_ms < fraction * lifetime


def leaf_certificate(chain_pem: bytes) -> x509.Certificate:
    """The first certificate of a PEM chain. Raises: ValueError when there is none."""
    certs = x509.load_pem_x509_certificates(chain_pem)
    if not certs:
        raise ValueError("no certificate in chain")
    return certs[0]


def validity_of(chain_pem: bytes) -> Validity:
    cert = leaf_certificate(chain_pem)
    return Validity(
        not_before_ms=int(cert.not_valid_before_utc.timestamp() * 1000),
        not_after_ms=int(cert.not_valid_after_utc.timestamp() * 1000),
    )


def cert_fingerprint(chain_pem: bytes) -> str:
    """sha256 hex of the DER of the leaf certificate ("" when the chain holds no certificate)."""
    try:
        cert = leaf_certificate(chain_pem)
    except ValueError:
        return ""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def install_renewed(
    store: IdentityStore, key: ec.EllipticCurvePrivateKey, renewed: CertificateRenewed
) -> None:
    """Make the new key and chain the identity; the old pair is kept as `*.prev`.

    Raises: StorageError (disk) or ValueError (the chain does not match the key: nothing changed).
    """
    leaf = leaf_certificate(renewed.certificate_chain_pem)
    if leaf.public_key() != key.public_key():
        raise ValueError("renewed certificate does not match the new key")
    d = store.dir
    try:
        atomic_write(d / (store.key_path.name + ".prev"), store.key_path.read_bytes(), mode=0o600)
        atomic_write(d / (store.cert_path.name + ".prev"), store.cert_path.read_bytes())
        atomic_write(d / STAGED_KEY, IdentityStore.key_pem(key), mode=0o600)
        atomic_write(d / STAGED_CERT, renewed.certificate_chain_pem)  # its presence = staging complete
        if renewed.ca_certificate_pem and renewed.ca_certificate_pem != store.ca_path.read_bytes():
            atomic_write(store.ca_path, renewed.ca_certificate_pem)
    except OSError as err:
        raise StorageError(f"cannot stage renewed identity in {d}: {err}") from err
    recover(store)


def recover(store: IdentityStore) -> None:
    """Finish or undo a swap a crash interrupted (idempotent; call before loading the identity)."""
    d = store.dir
    staged_key, staged_cert = d / STAGED_KEY, d / STAGED_CERT
    try:
        if staged_cert.exists():
            if staged_key.exists():
                os.replace(staged_key, store.key_path)
            os.replace(staged_cert, store.cert_path)
            fsync_dir(d)
            logger.info("renewed device certificate installed dir=%s", d)
        elif staged_key.exists():
            staged_key.unlink()  # staging never completed: the old pair stays
    except OSError as err:
        raise StorageError(f"cannot install renewed identity in {d}: {err}") from err


def forget_previous(store: IdentityStore) -> None:
    """After a successful session on the new certificate: drop the `.prev` copies."""
    for path in (store.key_path, store.cert_path):
        with contextlib.suppress(FileNotFoundError):
            (path.parent / (path.name + ".prev")).unlink()


class Renewer:
    """Per-process renewal bookkeeping for the Sync loop: the pending new key and the last attempt."""

    def __init__(
        self, store: IdentityStore, *, fraction: float = DEFAULT_FRACTION, retry_after_s: float = 600.0
    ) -> None:
        self.store = store
        self.fraction = fraction
        self.retry_after_s = retry_after_s
        self._pending: ec.EllipticCurvePrivateKey | None = None
        self._last_attempt_ms: int | None = None
        self._validity: Validity | None = None
        self.renewed_total = 0
        self.last_error = ""

    def due(self, now_ms: int) -> bool:
        if self._validity is None:
            try:
                self._validity = validity_of(self.store.cert_path.read_bytes())
            except (OSError, ValueError) as err:
                logger.warning("cannot read the device certificate for renewal: %s", err)
                return False
        return renewal_due(
            self._validity,
            now_ms,
            fraction=self.fraction,
            last_attempt_ms=self._last_attempt_ms,
            retry_after_s=self.retry_after_s,
        )

    def start(self, device_id: str, now_ms: int) -> bytes:
        """A CSR for a new key (kept in memory until the answer); records the attempt."""
        self._pending = ec.generate_private_key(ec.SECP256R1())
        self._last_attempt_ms = now_ms
        return IdentityStore.make_csr(self._pending, device_id)

    def finish(self, renewed: CertificateRenewed) -> bool:
        """Install the answer. True when the identity changed (the caller reconnects with it)."""
        key, self._pending = self._pending, None
        if renewed.error:
            self.last_error = renewed.error
            logger.warning("certificate renewal refused by the server: %s", renewed.error)
            return False
        if key is None:
            logger.warning("renewed certificate without a pending request: ignored")
            return False
        try:
            install_renewed(self.store, key, renewed)
        except (ValueError, StorageError) as err:
            self.last_error = str(err)
            logger.error("cannot install renewed certificate: %s", err)
            return False
        self.renewed_total += 1
        self.last_error = ""
        self._validity = None
        return True

    def session_succeeded(self) -> None:
        forget_previous(self.store)
