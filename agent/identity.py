"""Device identity on disk: private key (0600, generated here, never sent), certificate, CA.

Owns key generation, the CSR and the files under `<data_dir>/identity/`. Does not talk to the
server: `agent.transport.grpc_fleet.enroll()` carries the CSR, `agent.enroll` orchestrates.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.errors import StorageError
from agent.fsutil import atomic_write


@dataclass(frozen=True)
class Identity:
    device_id: str
    key_pem: bytes
    cert_chain_pem: bytes
    ca_pem: bytes
    sync_endpoint: str


class IdentityStore:
    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir / "identity"
        self.key_path = self.dir / "device.key"
        self.cert_path = self.dir / "device.pem"
        self.ca_path = self.dir / "ca.pem"
        self.meta_path = self.dir / "device.json"

    def is_enrolled(self) -> bool:
        return self.meta_path.exists() and self.cert_path.exists() and self.key_path.exists()

    def load_or_create_key(self) -> ec.EllipticCurvePrivateKey:
        """The key is generated on the device and written 0600 before anything else happens."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.key_path.exists():
            key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise StorageError(f"{self.key_path} is not an EC private key")
            return key
        key = ec.generate_private_key(ec.SECP256R1())
        atomic_write(self.key_path, self.key_pem(key), mode=0o600)
        return key

    @staticmethod
    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        """The unencrypted PKCS#8 PEM the key file holds (the file itself is 0600)."""
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @staticmethod
    def make_csr(key: ec.EllipticCurvePrivateKey, device_id: str) -> bytes:
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
            .sign(key, hashes.SHA256())
        )
        return csr.public_bytes(serialization.Encoding.PEM)

    def save(self, *, device_id: str, cert_chain_pem: bytes, ca_pem: bytes, sync_endpoint: str) -> None:
        atomic_write(self.cert_path, cert_chain_pem)
        atomic_write(self.ca_path, ca_pem)
        meta = {"device_id": device_id, "sync_endpoint": sync_endpoint}
        atomic_write(self.meta_path, json.dumps(meta).encode())  # written last: marks enrollment complete

    def load(self) -> Identity:
        """Raises: StorageError when the identity files are missing or unreadable."""
        try:
            meta = json.loads(self.meta_path.read_text())
            return Identity(
                device_id=str(meta["device_id"]),
                key_pem=self.key_path.read_bytes(),
                cert_chain_pem=self.cert_path.read_bytes(),
                ca_pem=self.ca_path.read_bytes(),
                sync_endpoint=str(meta.get("sync_endpoint", "")),
            )
        except (OSError, ValueError, KeyError) as err:
            raise StorageError(f"device identity in {self.dir} is unusable: {err}") from err

    def key_mode(self) -> int:
        return os.stat(self.key_path).st_mode & 0o777
