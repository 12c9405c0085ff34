"""The fleet CA: creates the CA, the server's TLS certificate, signs device CSRs, service
certificates (the MQTT broker, the server's MQTT identity) and CRLs.

Owns key material on disk under `<data_dir>/pki` (keys 0600, written atomically). Does not
decide *whether* a device may enroll (crud/enrollment.py does) and never logs key bytes.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet_server.errors import ConfigError, InvalidRequestError

logger = logging.getLogger(__name__)

DEVICE_URI_PREFIX = "urn:edgeloop:device:"


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to `path` with `mode` via a temp file and rename (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass(frozen=True)
class IssuedCertificate:
    pem: bytes
    serial: str
    fingerprint: str  # sha256 hex of the DER certificate
    not_after: datetime | None = None


def expiry_from_serial(serial_hex: str) -> datetime | None:
    """The not-after a device certificate's serial carries (its top bits: `sign_device_csr` puts the
    expiry's Unix seconds above 96 random bits), so a stored serial alone tells when it expires.
    None for serials that do not carry one (older random serials decode to no plausible date).
    """
    try:
        seconds = int(serial_hex, 16) >> 96
    except ValueError:
        return None
    if not _PLAUSIBLE_EXPIRY[0] <= seconds <= _PLAUSIBLE_EXPIRY[1]:
        return None
    return datetime.fromtimestamp(seconds, UTC)


_PLAUSIBLE_EXPIRY = (1_577_836_800, 7_258_118_400)  # 2020-01-01 .. 2200-01-01


class FleetCA:
    """A file-backed fleet CA. `create()` once (`edgeloop-server init`), then `load()`."""

    def __init__(self, pki_dir: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self.pki_dir = pki_dir
        self._key = key
        self.cert = cert

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def create(cls, pki_dir: Path, *, name: str = "edgeloop fleet CA", days: int = 3650) -> FleetCA:
        if (pki_dir / "ca.key").exists():
            raise ConfigError(f"a fleet CA already exists in {pki_dir}; refusing to overwrite it")
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        write_atomic(pki_dir / "ca.key", _key_pem(key), 0o600)
        write_atomic(pki_dir / "ca.pem", cert.public_bytes(serialization.Encoding.PEM), 0o644)
        logger.info("created fleet CA subject=%s dir=%s", name, pki_dir)
        return cls(pki_dir, key, cert)

    @classmethod
    def load(cls, pki_dir: Path) -> FleetCA:
        try:
            key = serialization.load_pem_private_key((pki_dir / "ca.key").read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate((pki_dir / "ca.pem").read_bytes())
        except FileNotFoundError as err:
            raise ConfigError(f"no fleet CA in {pki_dir}; run `edgeloop-server init` first") from err
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError("fleet CA key must be an EC key")
        return cls(pki_dir, key, cert)

    def ensure_server_certificate(self, hostnames: list[str]) -> tuple[bytes, bytes]:
        """Return (key_pem, cert_chain_pem) for the gRPC endpoints, reissuing when SANs change."""
        key_path, cert_path = self.pki_dir / "server.key", self.pki_dir / "server.pem"
        if key_path.exists() and cert_path.exists():
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            have = {str(v) for v in sans.get_values_for_type(x509.DNSName)} | {
                str(v) for v in sans.get_values_for_type(x509.IPAddress)
            }
            if have == set(hostnames) and cert.not_valid_after_utc > datetime.now(UTC) + timedelta(days=7):
                return key_path.read_bytes(), cert_path.read_bytes() + self.cert_pem
        key = ec.generate_private_key(ec.SECP256R1())
        alt: list[x509.GeneralName] = []
        for host in hostnames:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                alt.append(x509.DNSName(host))
        cert = self._issue(
            subject_cn="edgeloop fleet server",
            public_key=key.public_key(),
            days=825,
            sans=alt,
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
        )
        write_atomic(key_path, _key_pem(key), 0o600)
        write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return key_path.read_bytes(), cert_path.read_bytes() + self.cert_pem

    def sign_device_csr(self, csr_pem: bytes, device_id: str, *, days: int) -> IssuedCertificate:
        """Issue a client certificate whose CN and SAN URI are `device_id`.

        The CSR's own subject is ignored: the server decides the identity.

        Raises:
            InvalidRequestError: the CSR does not parse, its signature is bad, or the key is weak.
        """
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as err:
            raise InvalidRequestError("csr_pem is not a PEM PKCS#10 request") from err
        if not csr.is_signature_valid:
            raise InvalidRequestError("CSR signature does not verify")
        pub = csr.public_key()
        if not isinstance(pub, ec.EllipticCurvePublicKey) or pub.curve.key_size < 256:
            raise InvalidRequestError("CSR key must be EC P-256 or stronger")
        cert = self._issue(
            subject_cn=device_id,
            public_key=pub,
            days=days,
            sans=[x509.UniformResourceIdentifier(DEVICE_URI_PREFIX + device_id)],
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
            expiry_in_serial=True,
        )
        return _issued(cert)

    def issue_service_certificate(
        self, *, common_name: str, hostnames: list[str] | None = None, days: int = 825
    ) -> tuple[bytes, IssuedCertificate]:
        """A fresh key and a certificate for a fleet service: (key_pem, certificate).

        With `hostnames` it is a TLS server certificate (the broker's listener); without, a client
        certificate whose CN is `common_name` (the server's own MQTT identity). The caller writes them.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = []
        for host in hostnames or []:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        if not sans:
            sans = [x509.UniformResourceIdentifier("urn:edgeloop:service:" + common_name)]
        usage = ExtendedKeyUsageOID.SERVER_AUTH if hostnames else ExtendedKeyUsageOID.CLIENT_AUTH
        cert = self._issue(
            subject_cn=common_name, public_key=key.public_key(), days=days, sans=sans, usage=usage
        )
        return _key_pem(key), _issued(cert)

    def build_crl(self, revoked: Iterable[RevokedSerial], *, next_update_days: int = 7) -> bytes:
        """A PEM CRL signed by the fleet CA listing `revoked` (none is a valid, empty CRL).

        Mosquitto (OpenSSL) refuses *every* client once next_update has passed, so the publisher
        must rebuild it well before then (certs/crl.py republishes it daily).
        """
        now = datetime.now(UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - timedelta(minutes=5))
            .next_update(now + timedelta(days=next_update_days))
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
        )
        for item in revoked:
            try:
                serial = int(item.serial, 16)
            except ValueError:
                logger.warning("CRL: skipped malformed serial %r", item.serial[:64])
                continue
            at = item.revoked_at if item.revoked_at.tzinfo else item.revoked_at.replace(tzinfo=UTC)
            entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(at).build()
            builder = builder.add_revoked_certificate(entry)
        return builder.sign(self._key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    def _issue(
        self,
        *,
        subject_cn: str,
        public_key: ec.EllipticCurvePublicKey,
        days: int,
        sans: list[x509.GeneralName],
        usage: x509.ObjectIdentifier,
        expiry_in_serial: bool = False,
    ) -> x509.Certificate:
        now = datetime.now(UTC)
        not_after = (now + timedelta(days=days)).replace(microsecond=0)
        serial = x509.random_serial_number()
        if expiry_in_serial:  # see expiry_from_serial; 96 random bits stay (>= 64 as CAs must)
            serial = (int(not_after.timestamp()) << 96) | secrets.randbits(96)
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(serial)
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )


@dataclass(frozen=True)
class RevokedSerial:
    serial: str  # hex, as in Device.cert_serial
    revoked_at: datetime


def _issued(cert: x509.Certificate) -> IssuedCertificate:
    return IssuedCertificate(
        pem=cert.public_bytes(serialization.Encoding.PEM),
        serial=format(cert.serial_number, "x"),
        fingerprint=cert.fingerprint(hashes.SHA256()).hex(),
        not_after=cert.not_valid_after_utc,
    )
