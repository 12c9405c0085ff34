"""Content-addressed blobs of the OTA service: uploads spooled locally, stored as ``blobs/<sha256>``.

Owns receiving an upload into the local spool, storing it at its content address in the
`ArtifactStore`, and reading a blob back checked against its name (models, data sets, golden and
drift files that releases and the registry are built from). Does not know releases, the
repository or the database (`releases.py`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

from fleet_server.artifacts.fs import FilesystemStore
from fleet_server.artifacts.port import ArtifactNotFoundError, ArtifactStore
from fleet_server.errors import ConflictError, NotFoundError

logger = logging.getLogger(__name__)

_SHA_CHARS = set("0123456789abcdef")


class Blobs:
    """The blob half of `OtaService` (a base class): blobs in `store`, uploads spooled in `spool`."""

    store: ArtifactStore
    spool: Path

    def new_upload(self) -> Path:
        """A local spool file to receive an upload (then `adopt_blob`)."""
        fd, tmp = tempfile.mkstemp(dir=self.spool, prefix=".upload-")
        os.close(fd)
        return Path(tmp)

    def adopt_blob(self, upload: Path) -> tuple[str, int]:
        """Store a finished upload at its content address; returns (sha256, length)."""
        digest = hashlib.sha256()
        with upload.open("rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
        sha = digest.hexdigest()
        size = upload.stat().st_size
        key = blob_key(sha)
        if isinstance(self.store, FilesystemStore):  # same folder tree: a rename, no copy
            dest = self.store.path(key)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(upload, dest)
        else:
            self.store.put_file_if_absent(key, upload)
        return sha, size

    def blob_size(self, sha256: str) -> int:
        """Length of an uploaded blob. Raises: NotFoundError (never uploaded, or not a sha256)."""
        try:
            return self.store.stat(blob_key(sha256)).size
        except (ArtifactNotFoundError, ValueError):
            raise NotFoundError(f"blob {sha256[:16]} not uploaded") from None

    def blob_bytes(self, sha256: str) -> bytes:
        """A whole blob in memory (models and data sets the registry parses), checked against its
        name. Raises: NotFoundError; ConflictError when the stored bytes do not hash to `sha256`."""
        try:
            data = self.store.get(blob_key(sha256))
        except (ArtifactNotFoundError, ValueError):
            raise NotFoundError(f"blob {sha256[:16]} not uploaded") from None
        _check_blob(sha256, hashlib.sha256(data).hexdigest(), self.store.describe())
        return data

    def fetch_blob(self, sha256: str, dest: Path) -> Path:
        """Copy a blob to the local file `dest` (a hard link on the filesystem store); returns `dest`.

        The copy is hashed before anyone uses it: a blob is named by its sha256, so bytes changed in
        the store after the upload (a writer to the bucket, a corrupt disk) are never signed into a
        release or compiled.

        Raises:
            NotFoundError: never uploaded.
            ConflictError: the stored bytes do not hash to `sha256` (the copy is removed).
        """
        try:
            self.store.fetch_to(blob_key(sha256), dest)
        except (ArtifactNotFoundError, ValueError):
            raise NotFoundError(f"blob {sha256[:16]} not uploaded") from None
        digest = hashlib.sha256()
        with dest.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        try:
            _check_blob(sha256, digest.hexdigest(), self.store.describe())
        except ConflictError:
            dest.unlink(missing_ok=True)
            raise
        return dest

    def blob(self, sha256: str) -> Path:
        """The local file of a blob (filesystem store only: tests and tools). Raises: NotFoundError."""
        self.blob_size(sha256)
        if not isinstance(self.store, FilesystemStore):
            raise RuntimeError(f"blobs are in {self.store.describe()}: use fetch_blob or blob_bytes")
        return self.store.path(blob_key(sha256))


def _check_blob(name: str, actual: str, where: str) -> None:
    if actual != name:
        logger.error("blob integrity: %s in %s hashes to %s", name, where, actual)
        raise ConflictError(
            f"blob {name[:16]} in {where} does not match its sha256 (changed after upload, or corrupt): "
            "upload it again"
        )


def blob_key(sha256: str) -> str:
    if len(sha256) != 64 or not set(sha256) <= _SHA_CHARS:
        raise ValueError(f"not a sha256: {sha256[:80]!r}")
    return f"blobs/{sha256}"
