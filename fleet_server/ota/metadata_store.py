"""The TUF metadata of the OTA repository in an `ArtifactStore`, and how writes to it commit.

Owns the python-tuf `Repository` interface (`open`/`close`, signing each role with its keys: the
``device-<id>`` roles with the director's), reading the committed state (through a cache of the
immutable versioned files) and the write transactions. Metadata is stored as
``<version>.<role>.json`` (timestamp unversioned) and targets as ``<sha256>.<name>`` (consistent
snapshots), so a CDN or object store can serve the folder as static files while it is updated.

Writes from several replicas (one store, one database) are linearized by a compare-and-swap on the
timestamp version: a write runs as a transaction that reads the committed state (``timestamp.json``,
rolled forward to the highest ``<n>.timestamp.json``), signs new versions of the roles it changes
and stores each with put-if-absent (a version taken by a writer that died before committing is
skipped: the next version is signed instead), and commits by creating ``<t+1>.timestamp.json``
with put-if-absent. Exactly one writer can create it; a writer that loses (another replica
committed first, or this one lost its lock and is stale) restarts from the new state, so no
update is lost and no version file is ever overwritten. The unversioned ``timestamp.json`` and
``root.json`` are copies for clients, written after the commit. A cross-replica lock (`lock`:
`locks.WriterLock` on a shared folder, a PostgreSQL advisory lock for replicas on a database, see
`fleet_server.ota.signer`) makes conflicts rare; correctness does not depend on it.

Does not know which roles exist and what they sign (root, targets, director, devices: that is
`repository.OtaRepository`), the database or HTTP.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tuf.api.metadata import (  # type: ignore[attr-defined]
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

from fleet_server.artifacts.fs import FilesystemStore
from fleet_server.artifacts.port import ArtifactNotFoundError, ArtifactStore
from fleet_server.errors import ConflictError
from fleet_server.ota.keys import KeyRing
from fleet_server.ota.locks import ThreadLock, WriterLock

logger = logging.getLogger(__name__)

DIRECTOR = "director"
_SERIALIZER = JSONSerializer(compact=True)
_ATTEMPTS = 20  # transactions restarted after losing the timestamp race, then ConflictError
_CACHE_ITEMS = 256  # parsed immutable (versioned) metadata files kept per process


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


class StaleStateError(ConflictError):
    """Another writer committed first (or this one's read is stale): restart from the new state."""


@dataclass
class _Tx:
    """One write transaction: committed state read at begin, staged new versions of roles."""

    owner: int  # thread ident
    timestamp: bytes | None
    root: bytes | None
    staged: dict[str, bytes]


class MetadataStore(Repository):
    """The metadata and targets in `store` under `prefix`; see the module docstring for how writes commit.

    `store` may be a folder path (the repository folder itself, e.g. ``<data_dir>/ota/repo``).
    """

    def __init__(
        self,
        store: ArtifactStore | Path,
        keys: KeyRing,
        *,
        expiry: Expiry | None = None,
        now: Callable[[], datetime] = _utcnow,
        prefix: str = "repo",
        lock: AbstractContextManager[None] | None = None,
    ) -> None:
        if isinstance(store, Path):
            prefix = store.name
            store = FilesystemStore(store.parent)
        self.store = store
        self.prefix = prefix
        self._meta = f"{prefix}/metadata/"
        self._targets = f"{prefix}/targets/"
        self.keys = keys
        self.expiry = expiry or Expiry()
        self._now = now
        if lock is None:
            lock = (
                WriterLock(store.root / f".{prefix}.writer.lock")
                if isinstance(store, FilesystemStore)
                else ThreadLock()
            )
        self.lock: AbstractContextManager[None] = lock
        self._tx: _Tx | None = None
        self._cache: OrderedDict[str, Metadata[Any]] = OrderedDict()
        self._cache_lock = threading.Lock()
        # the expiry sweep's memory (OtaRepository.refresh_expiring_roles)
        self._next_role_sweep: datetime | None = None
        self._role_expiry: dict[str, tuple[int, datetime]] = {}  # role -> (version, expires)
        if isinstance(store, FilesystemStore):
            (store.root / prefix / "metadata").mkdir(parents=True, exist_ok=True)
            (store.root / prefix / "targets").mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------ folder view (filesystem store)

    def _fs_root(self) -> Path:
        if not isinstance(self.store, FilesystemStore):
            raise RuntimeError(f"the OTA repository is in {self.store.describe()}, not a folder")
        return self.store.root / self.prefix

    @property
    def root_dir(self) -> Path:
        return self._fs_root()

    @property
    def metadata_dir(self) -> Path:
        return self._fs_root() / "metadata"

    @property
    def targets_dir(self) -> Path:
        return self._fs_root() / "targets"

    # ------------------------------------------------------------ keys in the store

    def metadata_key(self, name: str) -> str:
        return self._meta + name

    def target_key(self, info: TargetFile) -> str:
        directory, _, name = info.path.rpartition("/")
        return f"{self._targets}{directory + '/' if directory else ''}{info.hashes['sha256']}.{name}"

    def target_file_path(self, info: TargetFile) -> Path:
        """The local file of a target (filesystem store only)."""
        return self._fs_root().parent / self.target_key(info)

    # ------------------------------------------------------------ committed state

    def _in_tx(self) -> _Tx | None:
        tx = self._tx
        return tx if tx is not None and tx.owner == threading.get_ident() else None

    def _read_timestamp(self, *, roll_forward: bool) -> bytes | None:
        return self._read_current("timestamp", roll_forward=roll_forward)

    def _read_root(self, *, roll_forward: bool) -> bytes | None:
        return self._read_current("root", roll_forward=roll_forward)

    def _read_current(self, role: str, *, roll_forward: bool) -> bytes | None:
        """`<role>.json` as stored; with `roll_forward`, the newest `<v>.<role>.json` after it (a
        writer that died between its commit and the copy left a newer one)."""
        try:
            data = self.store.get(self.metadata_key(f"{role}.json"))
        except ArtifactNotFoundError:
            data = None
        if not roll_forward:
            return data
        version = Metadata.from_bytes(data).signed.version if data is not None else 0
        while True:
            try:
                newer = self.store.get(self.metadata_key(f"{version + 1}.{role}.json"))
            except ArtifactNotFoundError:
                return data
            data, version = newer, version + 1

    def _versioned(self, name: str) -> Metadata[Any]:
        """A parsed immutable ``<v>.<role>.json`` (cached; callers must not modify it)."""
        key = self.metadata_key(name)
        with self._cache_lock:
            md = self._cache.get(key)
            if md is not None:
                self._cache.move_to_end(key)
                return md
        md = Metadata.from_bytes(self.store.get(key))
        with self._cache_lock:
            self._cache[key] = md
            while len(self._cache) > _CACHE_ITEMS:
                self._cache.popitem(last=False)
        return md

    def _load(self, role: str) -> Metadata[Any] | None:
        """The current metadata of `role` (staged in this thread's transaction, else committed);
        None if the role was never signed. Shared cached objects: do not modify."""
        tx = self._in_tx()
        if tx is not None and role in tx.staged:
            return Metadata.from_bytes(tx.staged[role])
        if role == Root.type:
            data = tx.root if tx is not None else self._read_root(roll_forward=False)
            return Metadata.from_bytes(data) if data is not None else None
        timestamp = tx.timestamp if tx is not None else self._read_timestamp(roll_forward=False)
        if timestamp is None:
            return None
        ts: Metadata[Any] = Metadata.from_bytes(timestamp)
        if role == Timestamp.type:
            return ts
        snapshot = self._load(Snapshot.type) if tx is not None and Snapshot.type in tx.staged else None
        if snapshot is None:
            snapshot = self._versioned(f"{ts.signed.snapshot_meta.version}.snapshot.json")
        if role == Snapshot.type:
            return snapshot
        meta = snapshot.signed.meta.get(f"{role}.json")
        return self._versioned(f"{meta.version}.{role}.json") if meta is not None else None

    # ------------------------------------------------------------ Repository interface

    def open(self, role: str) -> Metadata[Any]:
        current = self._load(role)
        if current is not None:
            return Metadata.from_bytes(current.to_bytes(_SERIALIZER))  # a private copy to edit
        signed: Any = {"root": Root, "snapshot": Snapshot, "timestamp": Timestamp}.get(role, Targets)()
        if isinstance(signed, Snapshot):
            signed.meta = {}  # filled by do_snapshot from targets_infos (with hashes)
        md: Metadata[Any] = Metadata(signed)
        md.signed.version = 0
        return md

    def close(self, role: str, md: Metadata[Any]) -> None:
        tx = self._in_tx()
        if tx is None:
            raise RuntimeError("repository edits run inside a write transaction (OtaRepository.write)")
        md.signed.version += 1
        md.signed.expires = (self._now() + self.expiry.for_role(role)).replace(microsecond=0)
        data = self._sign(role, md)
        if role == Root.type:
            if not self.store.put_if_absent(self.metadata_key(f"{md.signed.version}.root.json"), data):
                raise ConflictError(f"root version {md.signed.version} already exists")
            tx.root = data
        elif role != Timestamp.type:
            # A version already there was signed by a writer that never committed it (it died, or
            # lost the race): skip it. Whoever commits first wins; the loser restarts.
            while not self.store.put_if_absent(self.metadata_key(f"{md.signed.version}.{role}.json"), data):
                md.signed.version += 1
                data = self._sign(role, md)
        tx.staged[role] = data

    def _sign(self, role: str, md: Metadata[Any]) -> bytes:
        md.signatures.clear()
        signer_role = DIRECTOR if role.startswith("device-") else role
        for signer in self.keys.signers(signer_role):
            md.sign(signer, append=True)
        return bytes(md.to_bytes(_SERIALIZER))

    @property
    def targets_infos(self) -> dict[str, MetaFile]:
        tx = self._in_tx()
        assert tx is not None
        snapshot = self._load(Snapshot.type)
        infos: dict[str, MetaFile] = dict(snapshot.signed.meta) if snapshot is not None else {}
        for role, data in tx.staged.items():
            if role in (Root.type, Snapshot.type, Timestamp.type):
                continue
            version = Metadata.from_bytes(data).signed.version
            infos[f"{role}.json"] = MetaFile(
                version=version, length=len(data), hashes={"sha256": hashlib.sha256(data).hexdigest()}
            )
        return infos

    @property
    def snapshot_info(self) -> MetaFile:
        return MetaFile(version=self.snapshot().version)

    # ------------------------------------------------------------ transactions

    def write(self, op: Callable[[], Any]) -> Any:
        """Run `op` (edits) as one transaction committed by a new timestamp; returns its result.
        Nested calls join the running transaction.

        Raises:
            ConflictError: lost the timestamp race `_ATTEMPTS` times in a row.
        """
        if self._in_tx() is not None:
            return op()
        with self.lock:
            for attempt in range(1, _ATTEMPTS + 1):
                self._tx = _Tx(
                    owner=threading.get_ident(),
                    timestamp=self._read_timestamp(roll_forward=True),
                    root=self._read_root(roll_forward=True),
                    staged={},
                )
                try:
                    result = op()
                    self._commit(self._tx)
                    return result
                except StaleStateError as err:
                    logger.info("OTA repository changed under this writer (attempt %d): %s", attempt, err)
                    time.sleep(random.uniform(0, 0.02 * attempt))
                finally:
                    self._tx = None
        raise ConflictError(f"OTA repository write lost {_ATTEMPTS} races in a row; retry")

    def _commit(self, tx: _Tx) -> None:
        if not tx.staged:
            return
        if Timestamp.type not in tx.staged:
            self.do_snapshot()
            self.do_timestamp()
        data = tx.staged[Timestamp.type]
        version = Metadata.from_bytes(data).signed.version
        if not self.store.put_if_absent(self.metadata_key(f"{version}.timestamp.json"), data):
            raise StaleStateError(f"timestamp version {version} was committed by another writer")
        self.store.put(self.metadata_key("timestamp.json"), data)
        if Root.type in tx.staged:
            self.store.put(self.metadata_key("root.json"), tx.staged[Root.type])
