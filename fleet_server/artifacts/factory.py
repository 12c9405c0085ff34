"""`store_from_settings`: which `ArtifactStore` the server uses, from `artifact_store`.

``""`` is the filesystem under ``<data_dir>/ota`` (today's layout), ``file:///abs/path`` a shared
filesystem, ``s3://bucket/prefix`` an S3-compatible bucket at `s3_endpoint_url` (empty: AWS).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from fleet_server.artifacts.fs import FilesystemStore
from fleet_server.artifacts.port import ArtifactStore, ArtifactStoreConfigError
from fleet_server.artifacts.s3 import S3Store


def store_from_url(url: str, *, default_dir: Path, s3_endpoint_url: str = "") -> ArtifactStore:
    """The store `url` names (see the module docstring).

    Raises:
        ArtifactStoreConfigError: an unknown scheme, a relative file path or an S3 URL without bucket.
    """
    if not url:
        return FilesystemStore(default_dir)
    parts = urlsplit(url)
    if parts.scheme == "file":
        path = Path(unquote(parts.path))
        if parts.netloc not in ("", "localhost") or not path.is_absolute():
            raise ArtifactStoreConfigError(f"artifact_store {url!r}: use file:///absolute/path")
        return FilesystemStore(path)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ArtifactStoreConfigError(f"artifact_store {url!r}: use s3://bucket/prefix")
        return S3Store.connect(parts.netloc, parts.path.strip("/"), endpoint_url=s3_endpoint_url)
    raise ArtifactStoreConfigError(f"artifact_store {url!r}: expected '', file:///path or s3://bucket/prefix")


def store_from_settings(settings: Any) -> ArtifactStore:
    """The store of a `Settings` (read with defaults, so older settings objects work)."""
    return store_from_url(
        str(getattr(settings, "artifact_store", "") or ""),
        default_dir=Path(settings.data_dir) / "ota",
        s3_endpoint_url=str(getattr(settings, "s3_endpoint_url", "") or ""),
    )
