"""The server's Ed25519 audit key: signs chain heads; lives in the data dir, readable by the owner only.

Owns the key file (`<data_dir>/audit/head_key.pem`, PKCS#8, mode 0600) and sign/verify of head
messages. Several replicas sharing one database must share this key (or verification reports
their heads as unverifiable): mount the same file into each.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fleet_server.errors import ConfigError

logger = logging.getLogger(__name__)


class AuditKey:
    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private = private_key
        self.public: Ed25519PublicKey = private_key.public_key()
        raw = self.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.key_id = hashlib.sha256(raw).hexdigest()[:32]

    @classmethod
    def generate(cls) -> AuditKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, path: Path) -> AuditKey:
        """Raises: ConfigError when the file exists but is not an Ed25519 private key."""
        if not path.exists():
            key = Ed25519PrivateKey.generate()
            path.parent.mkdir(parents=True, exist_ok=True)
            pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
                fh.flush()
                os.fsync(fh.fileno())
            logger.info("created audit head key %s", path)
            return cls(key)
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            logger.warning("audit key %s had mode %o; tightening to 0600", path, mode)
            path.chmod(0o600)
        try:
            loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"audit key {path} is not a readable PEM private key: {err}") from err
        if not isinstance(loaded, Ed25519PrivateKey):
            raise ConfigError(f"audit key {path} is not an Ed25519 key")
        return cls(loaded)

    def sign(self, message: bytes) -> str:
        return self._private.sign(message).hex()

    def verify(self, signature_hex: str, message: bytes) -> bool:
        try:
            self.public.verify(bytes.fromhex(signature_hex), message)
        except (InvalidSignature, ValueError):
            return False
        return True
