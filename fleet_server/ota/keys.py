"""Signing keys of the OTA repository, addressed by securesystemslib private-key URIs.

Owns ``keys.json``: for every role the public keys, the threshold and, for the keys this server may
use online, a private-key URI. File keys use the ``file2:<path>`` scheme; pointing a URI at a KMS or
HSM (``gcpkms:``, ``awskms:``, ``hsm:`` ...) is a configuration change, not a code change, because
signers are built with `Signer.from_priv_key_uri`. Root keys are generated here for a first start
but are meant to be moved offline: root is only ever re-signed by `edgeloop keys rotate-root` on the
operator's machine. Does not decide what gets signed (`repository.py`).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner, Key, Signer, SSlibKey  # type: ignore[attr-defined]

from fleet_server.errors import ConfigError

logger = logging.getLogger(__name__)

ROLES = ("root", "targets", "snapshot", "timestamp", "director")


class KeyConfigError(ConfigError):
    """The key configuration is missing, unreadable or cannot produce a signer."""


@dataclass
class RoleKeys:
    """Public keys and threshold of one role, plus private-key URIs for the keys usable online."""

    threshold: int
    keys: list[Key]
    uris: dict[str, str] = field(default_factory=dict)  # keyid -> private key URI


def write_private_key(path: Path, signer: CryptoSigner) -> None:
    """Write an unencrypted PKCS#8 PEM key readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(signer.private_bytes)


def generate_file_key(directory: Path, name: str) -> tuple[Key, str]:
    """A new ed25519 key stored as ``<directory>/<name>.pem``; returns (public key, file2 URI)."""
    signer = CryptoSigner.generate_ed25519()
    path = directory / f"{name}.pem"
    write_private_key(path, signer)
    return signer.public_key, f"file2:{path.resolve()}"


class KeyRing:
    """Loads ``keys.json`` and builds signers for a role on demand."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self.roles: dict[str, RoleKeys] = {}

    @classmethod
    def create(cls, directory: Path, *, root_keys: int = 1, root_threshold: int = 1) -> KeyRing:
        """Generate file keys for every role (root: `root_keys` of them) and write ``keys.json``."""
        ring = cls(directory / "keys.json")
        for role in ROLES:
            count = root_keys if role == "root" else 1
            pairs = [generate_file_key(directory, f"{role}-{i}") for i in range(count)]
            ring.roles[role] = RoleKeys(
                threshold=root_threshold if role == "root" else 1,
                keys=[k for k, _ in pairs],
                uris={k.keyid: uri for k, uri in pairs},
            )
        ring.save()
        logger.info(
            "generated OTA keys dir=%s root_keys=%d threshold=%d", directory, root_keys, root_threshold
        )
        return ring

    @classmethod
    def load(cls, path: Path) -> KeyRing:
        ring = cls(path)
        try:
            raw = json.loads(path.read_text())
            for role, spec in raw.items():
                keys: list[Key] = [SSlibKey.from_dict(kid, dict(k)) for kid, k in spec["keys"].items()]
                ring.roles[role] = RoleKeys(int(spec["threshold"]), keys, dict(spec.get("uris", {})))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise KeyConfigError(f"cannot load OTA key config {path}: {err}") from err
        return ring

    def save(self) -> None:
        data: dict[str, Any] = {
            role: {
                "threshold": rk.threshold,
                "keys": {k.keyid: k.to_dict() for k in rk.keys},
                "uris": rk.uris,
            }
            for role, rk in self.roles.items()
        }
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, self._path)

    def signers(self, role: str) -> list[Signer]:
        """Signers for every key of `role` that has a private-key URI.

        Raises:
            KeyConfigError: the role is unknown, has no usable key, or a URI cannot be opened.
        """
        rk = self.roles.get(role)
        if rk is None:
            raise KeyConfigError(f"no keys configured for role {role!r}")
        signers: list[Signer] = []
        for key in rk.keys:
            uri = rk.uris.get(key.keyid)
            if not uri:
                continue
            try:
                signers.append(Signer.from_priv_key_uri(uri, key))
            except Exception as err:  # any backend (file, KMS, HSM) failure means: cannot sign
                raise KeyConfigError(f"cannot open signer for {role} key {key.keyid[:12]}: {err}") from err
        if len(signers) < rk.threshold and role != "root":
            raise KeyConfigError(f"role {role!r} has {len(signers)} usable keys, threshold {rk.threshold}")
        return signers
