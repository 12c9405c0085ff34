"""The `ArtifactStore` port: immutable-by-convention objects under relative keys, and its errors.

Owns the contract every store keeps: a reader never sees a half-written object (puts are atomic),
`put_if_absent` is a conditional create that exactly one of several concurrent writers wins
(the fencing primitive of the TUF signer, `fleet_server.ota.metadata_store`), range reads stream
(never the whole object in memory), and a missing key is `ArtifactNotFoundError`. Keys are
relative POSIX paths (``repo/metadata/3.snapshot.json``, ``blobs/<sha256>``). Does not know what
the objects mean (OTA, registry) nor how it is configured (`factory.py`).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from fleet_server.errors import ConfigError, FleetError, NotFoundError

CHUNK = 1 << 16  # bytes per streamed block


class ArtifactNotFoundError(NotFoundError):
    """No object under this key (the caller answers 404 or treats it as never written)."""


class ArtifactStoreError(FleetError):
    """The store could not be reached or refused the request: retry later (503 to a client)."""


class ArtifactStoreConfigError(ConfigError):
    """`artifact_store` / `s3_endpoint_url` do not describe a usable store: fix the settings."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int  # bytes


class ArtifactStore(Protocol):
    """Where OTA metadata, targets and uploaded blobs live (filesystem or S3-compatible)."""

    def describe(self) -> str:
        """Where the objects are, for logs (``file:///…`` or ``s3://bucket/prefix``)."""
        ...

    def get(self, key: str) -> bytes:
        """The whole object (small objects only: metadata). Raises: ArtifactNotFoundError."""
        ...

    def stat(self, key: str) -> ObjectInfo:
        """Size of the object. Raises: ArtifactNotFoundError."""
        ...

    def exists(self, key: str) -> bool: ...

    def open_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``[start, end)`` as a stream of blocks; the object is opened before this returns
        (so a missing key raises here, not while streaming).

        Raises:
            ArtifactNotFoundError: no such object.
        """
        ...

    def fetch_to(self, key: str, dest: Path) -> None:
        """Write the object to the local file `dest` (replaced). Raises: ArtifactNotFoundError."""
        ...

    def put(self, key: str, data: bytes) -> None:
        """Create or replace the object atomically."""
        ...

    def put_file(self, key: str, source: Path) -> None:
        """Create or replace the object with a local file's bytes, atomically (streamed)."""
        ...

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create the object only if no object has this key; True if this call created it."""
        ...

    def put_file_if_absent(self, key: str, source: Path) -> bool:
        """`put_if_absent` with a local file's bytes (streamed)."""
        ...

    def list(self, prefix: str) -> Iterator[str]:
        """Keys that start with `prefix` (no order promised)."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; a missing key is not an error."""
        ...


def check_key(key: str) -> str:
    """`key` if it is a clean relative POSIX path, else ValueError (no ``..``, no leading ``/``)."""
    if not key or key.startswith("/") or "\x00" in key or "\\" in key:
        raise ValueError(f"bad artifact key {key[:200]!r}")
    if posixpath.normpath(key) != key or key.split("/", 1)[0] == "..":
        raise ValueError(f"bad artifact key {key[:200]!r}")
    return key
