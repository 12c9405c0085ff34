"""The TUF repository of model releases and per-device assignments (python-tuf `Repository`).

Owns the signed metadata on disk and the targets it points at::

    root ── targets (releases: models/<name>/r<seq>/...) ── director (devices/*/*)
                                                              └── device-<id> (devices/<id>/*)
    snapshot (versions + hashes of every targets role) ── timestamp (short expiry)

Consistent snapshots: metadata is written as ``<version>.<role>.json`` (timestamp unversioned) and
targets as ``<sha256>.<name>``, so a CDN or object store can serve the folder as static files while
it is updated. The director and device roles are signed by the online director key and can only
sign paths under ``devices/``: a compromised director can re-assign releases, never ship bytes.
Does not know the database or HTTP (`releases.py`, `routes.py`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tuf.api.metadata import (  # type: ignore[attr-defined]
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer
from tuf.repository import Repository  # type: ignore[attr-defined]

from fleet_server.ota.keys import KeyRing

logger = logging.getLogger(__name__)

DIRECTOR = "director"
_SERIALIZER = JSONSerializer(compact=True)


@dataclass(frozen=True)
class Expiry:
    """How long each role's signature stays valid after signing."""

    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=90)
    director: timedelta = timedelta(days=30)
    snapshot: timedelta = timedelta(days=7)
    timestamp: timedelta = timedelta(days=1)

    def for_role(self, role: str) -> timedelta:
        if role.startswith("device-"):
            return self.director
        value: timedelta = getattr(self, role, self.targets)
        return value


def device_role(device_id: str) -> str:
    return f"device-{device_id}"


def _utcnow() -> datetime:
    return datetime.now(UTC)


class OtaRepository(Repository):
    """File-backed repository; one writer at a time across threads and processes (`WriterLock`)."""

    def __init__(
        self,
        root_dir: Path,
        keys: KeyRing,
        *,
        expiry: Expiry | None = None,
        now: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.root_dir = root_dir
        self.metadata_dir = root_dir / "metadata"
        self.targets_dir = root_dir / "targets"
        self.keys = keys
        self.expiry = expiry or Expiry()
        self._now = now
        self.lock = WriterLock(root_dir.parent / f".{root_dir.name}.writer.lock")
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        self.targets_dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------ Repository interface

    def open(self, role: str) -> Metadata[Any]:
        path = self.metadata_dir / f"{role}.json"
        if not path.exists():
            signed: Any = {"root": Root, "snapshot": Snapshot, "timestamp": Timestamp}.get(role, Targets)()
            if isinstance(signed, Snapshot):
                signed.meta = {}  # filled by do_snapshot from targets_infos (with hashes)
            md: Metadata[Any] = Metadata(signed)
            md.signed.version = 0
            return md
        return Metadata.from_bytes(path.read_bytes())

    def close(self, role: str, md: Metadata[Any]) -> None:
        md.signed.version += 1
        md.signed.expires = (self._now() + self.expiry.for_role(role)).replace(microsecond=0)
        md.signatures.clear()
        signer_role = DIRECTOR if role.startswith("device-") else role
        for signer in self.keys.signers(signer_role):
            md.sign(signer, append=True)
        self._write(role, md)

    def _write(self, role: str, md: Metadata[Any]) -> None:
        data = md.to_bytes(_SERIALIZER)
        if role != Timestamp.type:
            _atomic_write(self.metadata_dir / f"{md.signed.version}.{role}.json", data)
        _atomic_write(self.metadata_dir / f"{role}.json", data)

    @property
    def targets_infos(self) -> dict[str, MetaFile]:
        infos: dict[str, MetaFile] = {}
        for role in self.targets_roles():
            data = (self.metadata_dir / f"{role}.json").read_bytes()
            version = Metadata.from_bytes(data).signed.version
            infos[f"{role}.json"] = MetaFile(
                version=version, length=len(data), hashes={"sha256": hashlib.sha256(data).hexdigest()}
            )
        return infos

    @property
    def snapshot_info(self) -> MetaFile:
        return MetaFile(version=self.snapshot().version)

    # ------------------------------------------------------------ roles

    def targets_roles(self) -> list[str]:
        roles = [Targets.type]
        if (self.metadata_dir / f"{DIRECTOR}.json").exists():
            roles.append(DIRECTOR)
            roles.extend(sorted(self.director_roles()))
        return roles

    def director_roles(self) -> list[str]:
        director = self.targets(DIRECTOR)
        if director.delegations is None or director.delegations.roles is None:
            return []
        return list(director.delegations.roles)

    def initialize(self) -> None:
        """Create root v1, empty targets delegating ``devices/*/*`` to the director, snapshot, timestamp."""
        with self.lock:
            with self.edit_root() as root:
                for role, rk in self.keys.roles.items():
                    if role == DIRECTOR:
                        continue
                    for key in rk.keys:
                        root.add_key(key, role)
                    root.roles[role].threshold = rk.threshold
                root.consistent_snapshot = True
            director_keys = self.keys.roles[DIRECTOR].keys
            with self.edit_targets() as targets:
                targets.delegations = Delegations(
                    keys={k.keyid: k for k in director_keys},
                    roles={
                        DIRECTOR: DelegatedRole(
                            DIRECTOR, [k.keyid for k in director_keys], 1, True, paths=["devices/*/*"]
                        )
                    },
                )
            with self.edit_targets(DIRECTOR) as director:
                director.delegations = Delegations(keys={k.keyid: k for k in director_keys}, roles={})
            self.publish_metadata()
        logger.info("OTA repository initialized dir=%s", self.root_dir)

    def publish_metadata(self, *, force_timestamp: bool = False) -> None:
        """New snapshot (if any targets role changed) and a new timestamp."""
        with self.lock:
            self.do_snapshot()
            self.do_timestamp(force=force_timestamp)

    # ------------------------------------------------------------ targets

    def add_target_file(self, path: str, source: Path, custom: dict[str, Any] | None = None) -> TargetFile:
        """Store `source` as the consistent-snapshot target file of `path`; returns its TargetFile."""
        info = TargetFile.from_file(path, str(source), ["sha256"])
        if custom:
            info.unrecognized_fields["custom"] = custom
        dest = self.target_file_path(info)
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            # Unique per writer: two replicas may store the same blob at once (outside the lock).
            tmp = dest.with_name(f"{dest.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            with source.open("rb") as src, tmp.open("wb") as out:
                while block := src.read(1 << 20):
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dest)
        return info

    def target_file_path(self, info: TargetFile) -> Path:
        directory, _, name = info.path.rpartition("/")
        return self.targets_dir / directory / f"{info.hashes['sha256']}.{name}"

    def set_targets(self, infos: list[TargetFile]) -> None:
        """Add target entries to the top-level targets role (one new version), then snapshot."""
        with self.lock:
            with self.edit_targets() as targets:
                for info in infos:
                    targets.targets[info.path] = info
            self.publish_metadata()

    def assign(self, assignments: list[tuple[str, TargetFile]]) -> None:
        """Sign each ``(device_id, devices/<id>/... target)`` into its device role, then one snapshot."""
        with self.lock:
            existing = set(self.director_roles())
            missing = [d for d, _ in assignments if device_role(d) not in existing]
            if missing:
                keys = self.keys.roles[DIRECTOR].keys
                with self.edit_targets(DIRECTOR) as director:
                    assert director.delegations is not None
                    assert director.delegations.roles is not None
                    for device_id in missing:
                        director.delegations.roles[device_role(device_id)] = DelegatedRole(
                            device_role(device_id),
                            [k.keyid for k in keys],
                            1,
                            True,
                            paths=[f"devices/{device_id}/*"],
                        )
            for device_id, info in assignments:
                with self.edit_targets(device_role(device_id)) as signed:
                    signed.targets = {info.path: info}
            self.publish_metadata()

    def release_targets(self) -> dict[str, TargetFile]:
        return dict(self.targets().targets)

    # ------------------------------------------------------------ root rotation

    def install_root(self, data: bytes) -> int:
        """Accept a new root signed offline: it must verify against the old and the new root.

        Raises:
            tuf.api.exceptions.UnsignedMetadataError: threshold of old or new keys not met.
            ValueError: the version is not exactly current + 1.
        """
        new = Metadata[Root].from_bytes(data)
        with self.lock:
            old = self.root()
            if new.signed.version != old.version + 1:
                raise ValueError(f"root version must be {old.version + 1}, got {new.signed.version}")
            old.verify_delegate(Root.type, new.signed_bytes, new.signatures)
            new.signed.verify_delegate(Root.type, new.signed_bytes, new.signatures)
            self._write(Root.type, new)
            self.publish_metadata(force_timestamp=True)
        logger.info("installed root version=%d", new.signed.version)
        return new.signed.version

    def root_bytes(self) -> bytes:
        return (self.metadata_dir / "root.json").read_bytes()


def rotate_root(
    current: bytes,
    *,
    old_signers: list[Any],
    new_keys: list[Any],
    threshold: int,
    new_signers: list[Any],
    expires: datetime,
) -> bytes:
    """Build root N+1 with `new_keys`/`threshold` for the root role, signed by old and new keys.

    Runs on the operator's machine (root keys stay offline); the server only verifies and stores.
    """
    md = Metadata[Root].from_bytes(current)
    root = deepcopy(md.signed)
    for keyid in list(root.roles[Root.type].keyids):
        root.revoke_key(keyid, Root.type)
    for key in new_keys:
        root.add_key(key, Root.type)
    root.roles[Root.type].threshold = threshold
    root.version += 1
    root.expires = expires.replace(microsecond=0)
    new_md = Metadata(root)
    seen: set[str] = set()
    for signer in [*old_signers, *new_signers]:
        if signer.public_key.keyid not in seen:
            seen.add(signer.public_key.keyid)
            new_md.sign(signer, append=True)
    return new_md.to_bytes(_SERIALIZER)


class WriterLock:
    """One writer of the repository at a time, across threads *and* processes.

    Several server replicas on one host (or on a shared volume with working `flock`) sign into the
    same folder: every change re-reads the metadata from disk under this lock, so a version
    number is never issued twice. Re-entrant per thread (a deploy publishes under the lock it
    holds); the exclusive `flock` on `path` is taken on the outermost acquire and released with
    it, and the kernel drops it if the process dies. The lock file lives beside the repository,
    never inside the served folder.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        try:
            if self._depth == 0:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
                self._fd = fd
            self._depth += 1
        except BaseException:
            self._thread_lock.release()
            raise

    def __exit__(self, *_: object) -> None:
        try:
            self._depth -= 1
            if self._depth == 0 and self._fd is not None:
                fd, self._fd = self._fd, None
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
        finally:
            self._thread_lock.release()


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
