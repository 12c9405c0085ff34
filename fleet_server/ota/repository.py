"""The TUF repository of model releases and per-device assignments (python-tuf `Repository`).

Owns the signed metadata and the targets it points at, kept in an `ArtifactStore` (a folder or an
S3 bucket, under ``repo/``)::

    root ── targets (releases: models/<name>/r<seq>/...) ── director (devices/*/*)
                                                              └── device-<id> (devices/<id>/*)
    snapshot (versions + hashes of every targets role) ── timestamp (short expiry)

Consistent snapshots: metadata is written as ``<version>.<role>.json`` (timestamp unversioned) and
targets as ``<sha256>.<name>``, so a CDN or object store can serve the folder as static files while
it is updated. The director and device roles are signed by the online director key and can only
sign paths under ``devices/``: a compromised director can re-assign releases, never ship bytes.

Writes from several replicas (one store, one database) are linearized by a compare-and-swap on the
timestamp version: a write runs as a transaction that reads the committed state (``timestamp.json``,
rolled forward to the highest ``<n>.timestamp.json``), signs new versions of the roles it changes
and stores each with put-if-absent (a version taken by a writer that died before committing is
skipped: the next version is signed instead), and commits by creating ``<t+1>.timestamp.json``
with put-if-absent. Exactly one writer can create it; a writer that loses (another replica
committed first, or this one lost its lock and is stale) restarts from the new state, so no
update is lost and no version file is ever overwritten. The unversioned ``timestamp.json`` and
``root.json`` are copies for clients, written after the commit. A cross-replica lock (`lock`:
`WriterLock` on a shared folder, a PostgreSQL advisory lock for replicas on a database, see
`fleet_server.ota.signer`) makes conflicts rare; correctness does not depend on it.
Does not know the database or HTTP (`releases.py`, `routes.py`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager
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

from fleet_server.artifacts.fs import FilesystemStore
from fleet_server.artifacts.port import ArtifactNotFoundError, ArtifactStore
from fleet_server.errors import ConflictError
from fleet_server.ota.keys import KeyRing

logger = logging.getLogger(__name__)

DIRECTOR = "director"
_SERIALIZER = JSONSerializer(compact=True)
_ATTEMPTS = 20  # transactions restarted after losing the timestamp race, then ConflictError
_CACHE_ITEMS = 256  # parsed immutable (versioned) metadata files kept per process
_ROLE_SWEEP = timedelta(minutes=10)  # how often the signer looks for targets roles to re-sign
_ROOT_WARNING = timedelta(days=30)  # warn this long before the (offline) root expires


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


class RepoLock(AbstractContextManager[None]):
    """Re-entrant per thread; one holder across the replicas it is shared with."""


@dataclass
class _Tx:
    """One write transaction: committed state read at begin, staged new versions of roles."""

    owner: int  # thread ident
    timestamp: bytes | None
    root: bytes | None
    staged: dict[str, bytes]


class OtaRepository(Repository):
    """The repository in `store` under `prefix`; see the module docstring for how writes commit.

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
        try:
            data = self.store.get(self.metadata_key("timestamp.json"))
        except ArtifactNotFoundError:
            data = None
        if not roll_forward:
            return data
        version = Metadata.from_bytes(data).signed.version if data is not None else 0
        while True:  # a writer that died between its commit and the copy left a newer one
            try:
                newer = self.store.get(self.metadata_key(f"{version + 1}.timestamp.json"))
            except ArtifactNotFoundError:
                return data
            data, version = newer, version + 1

    def _read_root(self, *, roll_forward: bool) -> bytes | None:
        try:
            data = self.store.get(self.metadata_key("root.json"))
        except ArtifactNotFoundError:
            data = None
        if not roll_forward:
            return data
        version = Metadata.from_bytes(data).signed.version if data is not None else 0
        while True:
            try:
                newer = self.store.get(self.metadata_key(f"{version + 1}.root.json"))
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

    # ------------------------------------------------------------ roles

    def targets_roles(self) -> list[str]:
        snapshot = self._load(Snapshot.type)
        return [name.removesuffix(".json") for name in (snapshot.signed.meta if snapshot else {})]

    def director_roles(self) -> list[str]:
        director = self._load(DIRECTOR)
        if director is None:
            return []
        delegations = director.signed.delegations
        if delegations is None or delegations.roles is None:
            return []
        return list(delegations.roles)

    def is_initialized(self) -> bool:
        return self.store.exists(self.metadata_key("root.json")) or self.store.exists(
            self.metadata_key("1.root.json")
        )

    def initialize(self) -> None:
        """Create root v1, empty targets delegating ``devices/*/*`` to the director, snapshot, timestamp.

        Raises:
            ConflictError: another replica initialized the store first (with its own keys unless
                they are shared): copy its keys, then restart.
        """

        def init() -> None:
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

        self.write(init)
        logger.info("OTA repository initialized store=%s", self.store.describe())

    def publish_metadata(self, *, force_timestamp: bool = False) -> None:
        """New snapshot (if any targets role changed) and a new timestamp."""

        def publish() -> None:
            self.do_snapshot()
            self.do_timestamp(force=force_timestamp)

        self.write(publish)

    # ------------------------------------------------------------ targets

    def add_target_file(self, path: str, source: Path, custom: dict[str, Any] | None = None) -> TargetFile:
        """Store `source` as the consistent-snapshot target file of `path`; returns its TargetFile.
        Content-addressed: replicas storing the same bytes at once write the same object."""
        info = TargetFile.from_file(path, str(source), ["sha256"])
        if custom:
            info.unrecognized_fields["custom"] = custom
        self.store.put_file_if_absent(self.target_key(info), source)
        return info

    def set_targets(self, infos: list[TargetFile]) -> None:
        """Add target entries to the top-level targets role (one new version), then snapshot."""

        def add() -> None:
            with self.edit_targets() as targets:
                for info in infos:
                    targets.targets[info.path] = info
            self.publish_metadata()

        self.write(add)

    def assign(self, assignments: list[tuple[str, TargetFile]]) -> None:
        """Sign each ``(device_id, devices/<id>/... target)`` into its device role, then one snapshot."""

        def sign() -> None:
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

        self.write(sign)

    def release_targets(self) -> dict[str, TargetFile]:
        targets = self._load(Targets.type)
        return dict(targets.signed.targets) if targets is not None else {}

    def device_targets(self, device_id: str) -> dict[str, TargetFile]:
        """What the device's role signs now (empty if never assigned)."""
        md = self._load(device_role(device_id))
        return dict(md.signed.targets) if md is not None else {}

    def refresh_if_stale(self, now: datetime) -> None:
        """Re-sign timestamp (and snapshot) when less than half their lifetime is left."""

        def refresh() -> None:
            if self.snapshot().expires - now < self.expiry.snapshot / 2:
                self.do_snapshot(force=True)
                self.do_timestamp(force=True)
            elif self.timestamp().expires - now < self.expiry.timestamp / 2:
                self.do_timestamp(force=True)

        if self._stale(now):
            self.write(refresh)

    def refresh_expiring_roles(self, now: datetime, *, batch: int = 500) -> list[str]:
        """Re-sign the online targets roles (targets, director, every ``device-<id>``) that have less
        than half their lifetime left, `batch` roles per transaction; returns the roles re-signed.

        Without this a fleet that publishes nothing new for a month finds its devices refusing all
        metadata (director and device roles expire after 30 days, targets after 90). At most one
        sweep per `_ROLE_SWEEP` per process: the expiry of each (role, version) is remembered, so a
        sweep reads only roles whose version changed since the last one. Root is offline: it is only
        reported (a warning from 30 days before it expires), never re-signed here.
        """
        if self._next_role_sweep is not None and now < self._next_role_sweep:
            return []
        self._next_role_sweep = now + _ROLE_SWEEP
        root = self._load(Root.type)
        if root is not None and root.signed.expires - now < _ROOT_WARNING:
            logger.warning(
                "OTA root metadata v%d expires %s: sign a new root offline (edgeloop keys rotate-root)",
                root.signed.version,
                root.signed.expires.isoformat(),
            )
        expiring = self._expiring_roles(now)
        done: list[str] = []
        for start in range(0, len(expiring), batch):
            chunk = expiring[start : start + batch]

            def resign(chunk: list[str] = chunk) -> list[str]:
                resigned = []
                for role in chunk:
                    md = self._load(role)  # another writer may have re-signed it since the sweep read it
                    if md is None or md.signed.expires - now >= self.expiry.for_role(role) / 2:
                        continue
                    with self.edit_targets(role):
                        pass  # same content, next version, new expiry and signatures (see close)
                    resigned.append(role)
                if resigned:
                    self.publish_metadata()
                return resigned

            done.extend(self.write(resign))
        if done:
            logger.info("OTA re-signed %d targets roles before they expired: %s", len(done), _few(done))
        return done

    def _expiring_roles(self, now: datetime) -> list[str]:
        snapshot = self._load(Snapshot.type)
        if snapshot is None:
            return []
        out: list[str] = []
        seen: dict[str, tuple[int, datetime]] = {}
        for name, meta in snapshot.signed.meta.items():
            role = name.removesuffix(".json")
            known = self._role_expiry.get(role)
            if known is not None and known[0] == meta.version:
                expires = known[1]
            else:
                expires = self._versioned(f"{meta.version}.{role}.json").signed.expires
            seen[role] = (meta.version, expires)
            if expires - now < self.expiry.for_role(role) / 2:
                out.append(role)
        self._role_expiry = seen
        # the top-level roles first: every device's chain goes through them
        return sorted(out, key=lambda r: (r.startswith("device-"), r != Targets.type, r))

    def _stale(self, now: datetime) -> bool:
        timestamp = self._load(Timestamp.type)
        snapshot = self._load(Snapshot.type)
        if timestamp is None or snapshot is None:
            return False
        return bool(
            snapshot.signed.expires - now < self.expiry.snapshot / 2
            or timestamp.signed.expires - now < self.expiry.timestamp / 2
        )

    # ------------------------------------------------------------ root rotation

    def install_root(self, data: bytes) -> int:
        """Accept a new root signed offline: it must verify against the old and the new root.

        Raises:
            tuf.api.exceptions.UnsignedMetadataError: threshold of old or new keys not met.
            ValueError: the version is not exactly current + 1.
        """
        new = Metadata[Root].from_bytes(data)
        stored = False  # by an attempt of this call that then lost the timestamp race

        def install() -> None:
            nonlocal stored
            tx = self._in_tx()
            assert tx is not None
            old = self.root()
            if stored and old.version == new.signed.version and tx.root == data:
                pass
            elif new.signed.version != old.version + 1:
                raise ValueError(f"root version must be {old.version + 1}, got {new.signed.version}")
            else:
                old.verify_delegate(Root.type, new.signed_bytes, new.signatures)
                new.signed.verify_delegate(Root.type, new.signed_bytes, new.signatures)
                if not self.store.put_if_absent(self.metadata_key(f"{new.signed.version}.root.json"), data):
                    raise ConflictError(f"root version {new.signed.version} already exists")
                tx.root, stored = data, True
            tx.staged[Root.type] = data
            self.do_snapshot()
            self.do_timestamp(force=True)

        self.write(install)
        logger.info("installed root version=%d", new.signed.version)
        return new.signed.version

    def root_bytes(self) -> bytes:
        data = self._read_root(roll_forward=False)
        if data is None:
            raise ArtifactNotFoundError("the OTA repository has no root yet")
        return data


class ThreadLock(AbstractContextManager[None]):
    """One writer at a time in this process (a store shared only by this process)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *_: object) -> None:
        self._lock.release()


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


class OuterLock(AbstractContextManager[None]):
    """Re-entrant per thread around a cross-process lock taken on the outermost enter and released
    on the outermost exit (a deploy publishes under the lock it already holds). Subclasses say how
    the outer lock is taken (`_acquire_outer`) and dropped (`_release_outer`)."""

    def __init__(self) -> None:
        self._thread_lock = threading.RLock()
        self._depth = 0

    def _acquire_outer(self) -> None:
        raise NotImplementedError

    def _release_outer(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        try:
            if self._depth == 0:
                self._acquire_outer()
            self._depth += 1
        except BaseException:
            self._thread_lock.release()
            raise

    def __exit__(self, *_: object) -> None:
        try:
            self._depth -= 1
            if self._depth == 0:
                self._release_outer()
        finally:
            self._thread_lock.release()


class WriterLock(OuterLock):
    """One writer of the repository at a time, across threads *and* processes.

    Several server replicas on one host (or on a shared volume with working `flock`) sign into the
    same folder: every change re-reads the metadata from disk under this lock, so a version
    number is never issued twice. The exclusive `flock` on `path` is taken on the outermost acquire
    and released with it, and the kernel drops it if the process dies. The lock file lives beside
    the repository, never inside the served folder.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._fd: int | None = None

    def _acquire_outer(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _release_outer(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _few(roles: list[str], n: int = 5) -> str:
    return ", ".join(roles[:n]) + (f" and {len(roles) - n} more" if len(roles) > n else "")
