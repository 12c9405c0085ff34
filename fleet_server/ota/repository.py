"""The TUF repository of model releases and per-device assignments: which roles exist, what they sign.

The roles, signed into the `MetadataStore` (metadata_store.py: storage and write transactions)::

    root ── targets (releases: models/<name>/r<seq>/...) ── director (devices/*/*)
                                                              └── device-<id> (devices/<id>/*)
    snapshot (versions + hashes of every targets role) ── timestamp (short expiry)

The director and device roles are signed by the online director key and can only sign paths
under ``devices/``: a compromised director can re-assign releases, never ship bytes. Owns
initializing the repository, adding release targets, signing assignments into device roles,
re-signing roles before they expire, and accepting a root signed offline.
Does not know the database or HTTP (`releases.py`, `routes.py`), how a write commits
(`metadata_store.py`) or how a new root is built (`root_rotation.py`, offline). Re-exports the
names callers import from here: `Expiry`, `device_role`, `DIRECTOR`, the locks and `rotate_root`.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tuf.api.metadata import (  # type: ignore[attr-defined]
    DelegatedRole,
    Delegations,
    Metadata,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

from fleet_server.artifacts.port import ArtifactNotFoundError
from fleet_server.errors import ConflictError
from fleet_server.ota.locks import OuterLock, ThreadLock, WriterLock
from fleet_server.ota.metadata_store import DIRECTOR, Expiry, MetadataStore, StaleStateError, device_role
from fleet_server.ota.root_rotation import rotate_root

__all__ = [
    "DIRECTOR",
    "Expiry",
    "OtaRepository",
    "OuterLock",
    "StaleStateError",
    "ThreadLock",
    "WriterLock",
    "canonical_json",
    "device_role",
    "rotate_root",
]

logger = logging.getLogger(__name__)

_ROLE_SWEEP = timedelta(minutes=10)  # how often the signer looks for targets roles to re-sign
_ROOT_WARNING = timedelta(days=30)  # warn this long before the (offline) root expires


class OtaRepository(MetadataStore):
    """The edgeloop roles in a `MetadataStore` (constructed like it: `store` may be a folder path,
    the repository folder itself, e.g. ``<data_dir>/ota/repo``)."""

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


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _few(roles: list[str], n: int = 5) -> str:
    return ", ".join(roles[:n]) + (f" and {len(roles) - n} more" if len(roles) > n else "")
