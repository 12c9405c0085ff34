"""Release publishing: the OTA service the REST routes and the CLI call.

`OtaService` builds the repository (keys created on first start or given, checked against the
stored root) and brings together its blobs (`blobs.py`), releases (here) and deployments
(`deployments.py`). Owns the release sequence (a database row per release, separate from the model
version: going back to an old model is a new release pointing at the old bytes) and writing
release targets (artifact + chunk manifest + patches from the previous release + golden set +
drift reference, the last one checked for shape first, + an xz copy when it is smaller). Targets
and metadata live in the `ArtifactStore` (``repo/...``); the files a publish builds are spooled
locally first. Every publish and key generation is recorded in the audit log after it committed
(`audit.port.record_change`; the actor is the operator the route names, else the system). Does not
speak HTTP (`routes.py`) or sign root. Re-exports `Assignment` and `assignment_for`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import lzma
import tempfile
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select
from tuf.api.metadata import TargetFile  # type: ignore[attr-defined]

from fleet_server.artifacts.fs import FilesystemStore
from fleet_server.artifacts.port import ArtifactStore
from fleet_server.audit.chain import Actor, Target
from fleet_server.audit.port import AuditRecorder, MemoryAuditLog, record_change
from fleet_server.errors import ConflictError, InvalidRequestError
from fleet_server.models import utcnow
from fleet_server.ota.blobs import Blobs, blob_key
from fleet_server.ota.chunking import build_layout, manifest_bytes
from fleet_server.ota.deployments import Assignment, Deployments, assignment_for, register_service
from fleet_server.ota.drift_reference import check_drift_reference
from fleet_server.ota.keys import KeyConfigError, KeyRing
from fleet_server.ota.models import OtaRelease, ReleaseCreate
from fleet_server.ota.patches import add_patches
from fleet_server.ota.repository import Expiry, OtaRepository, ThreadLock, canonical_json
from protos.edgeloop.chunk_manifest import VERSION as MANIFEST_VERSION
from protos.edgeloop.chunk_manifest import PatchRef

__all__ = ["Assignment", "OtaService", "assignment_for", "release_json"]  # Assignment*: deployments.py

logger = logging.getLogger(__name__)

_KEY_STRIPES = 64  # publishes with keys hashing to the same stripe run one at a time


class OtaService(Blobs, Deployments):
    """The repository and blobs in `store` (default: the folder `directory`); keys and the upload
    spool under `directory`. Keys are created on first start, unless the store already holds a
    repository (another replica made it): then this server must have been given the same keys."""

    def __init__(
        self,
        directory: Path,
        *,
        expiry: Expiry | None = None,
        audit: AuditRecorder | None = None,
        store: ArtifactStore | None = None,
    ) -> None:
        self.dir = directory
        self.store: ArtifactStore = store if store is not None else FilesystemStore(directory)
        self.audit: AuditRecorder = audit if audit is not None else MemoryAuditLog()
        keys_path = directory / "keys" / "keys.json"
        self._new_keys = not keys_path.exists()  # recorded once an audit log is attached
        probe = OtaRepository(self.store, KeyRing(keys_path), lock=ThreadLock())
        if self._new_keys and probe.is_initialized():
            raise KeyConfigError(
                f"{self.store.describe()} already holds an OTA repository but {keys_path} is missing: "
                "give this replica the keys of the one that created it (keys.json and its *.pem, "
                "a Secret in Kubernetes) instead of generating new ones"
            )
        keys = KeyRing.create(directory / "keys") if self._new_keys else KeyRing.load(keys_path)
        self.repo = OtaRepository(self.store, keys, expiry=expiry)
        if not self.repo.is_initialized():
            try:
                self.repo.initialize()
            except ConflictError:
                logger.info("OTA repository initialized by another replica; using it")
        _check_keys(self.repo)
        self.spool = directory / "spool"
        self.spool.mkdir(parents=True, exist_ok=True)
        self._key_locks = [threading.Lock() for _ in range(_KEY_STRIPES)]
        self.signs_timestamps_now: Callable[[], bool] = lambda: True  # signer.py: the lease holder only
        register_service(directory, self)

    @property
    def signs_timestamps(self) -> bool:
        """Whether this replica refreshes stale timestamps (the `tuf-signer` holder, or standalone)."""
        return self.signs_timestamps_now()

    def use_audit(self, audit: AuditRecorder) -> None:
        """Record into `audit` from now on (the composition root builds the log after this service);
        keys this service generated at construction are recorded now."""
        self.audit = audit
        if self._new_keys:
            self._new_keys = False
            roles = {role: len(rk.keys) for role, rk in self.repo.keys.roles.items()}
            record_change(audit, Actor.system("ota"), "ota.keys.generated", Target("ota_keys", "all"),
                          {"roles": roles})  # fmt: skip

    # ------------------------------------------------------------ releases

    def publish_once(
        self,
        *,
        session: Session,
        spec: ReleaseCreate,
        created_by: str,
        idempotency_key: str,
        actor: Actor | None = None,
    ) -> tuple[OtaRelease, bool]:
        """Publish unless `idempotency_key` already made a release; returns (row, created).

        A retry while the first request is still signing waits for it (same process) or meets the
        unique key (another replica), then gets the finished row.

        Raises:
            ConflictError: the key was used for a different request.
            NotFoundError, InvalidRequestError: as for `publish`.
        """
        fingerprint = hashlib.sha256(canonical_json(spec.model_dump(mode="json"))).hexdigest()
        stripe = int(hashlib.sha256(idempotency_key.encode()).hexdigest()[:8], 16) % _KEY_STRIPES
        with self._key_locks[stripe]:
            existing = self._by_key(session, idempotency_key, fingerprint)
            if existing is not None:
                return existing, False
            try:
                row = self.publish(
                    session=session,
                    spec=spec,
                    created_by=created_by,
                    idempotency=(idempotency_key, fingerprint),
                    actor=actor,
                )
            except IntegrityError:
                session.rollback()
                existing = self._by_key(session, idempotency_key, fingerprint)
                if existing is None:
                    raise
                return existing, False
            return row, True

    @staticmethod
    def _by_key(session: Session, key: str, fingerprint: str) -> OtaRelease | None:
        row = session.exec(select(OtaRelease).where(OtaRelease.idempotency_key == key)).first()
        if row is not None and row.request_sha256 != fingerprint:
            raise ConflictError(
                f"Idempotency-Key {key[:40]!r} was used for another request (release {row.seq}); "
                "use a new key to publish different content"
            )
        if row is not None:
            logger.info("release publish replayed seq=%d key=%s", row.seq, key[:40])
        return row

    def publish(
        self,
        *,
        session: Session,
        spec: ReleaseCreate,
        created_by: str,
        idempotency: tuple[str, str] | None = None,
        actor: Actor | None = None,
    ) -> OtaRelease:
        """Sign a new release into the targets role; returns the stored row. `idempotency` is the
        (key, request sha256) stored with it (`publish_once`); `actor` who asked (audit log).

        Raises:
            NotFoundError: a referenced blob was not uploaded.
            InvalidRequestError: a golden threshold without a golden set, or a drift reference
                that is not one (too big, not JSON, wrong shape).
        """
        length = self.blob_size(spec.artifact_sha256)
        if spec.golden_threshold > 0 and not spec.golden_sha256:
            raise InvalidRequestError("golden_threshold needs golden_sha256")
        with tempfile.TemporaryDirectory(dir=self.spool) as work:
            if spec.drift_reference_sha256:
                drift = self.fetch_blob(spec.drift_reference_sha256, Path(work) / "drift_reference.json")
                check_drift_reference(drift)
            return self._publish(
                session, spec, created_by, idempotency, actor, length=length, work=Path(work)
            )

    def _publish(
        self,
        session: Session,
        spec: ReleaseCreate,
        created_by: str,
        idempotency: tuple[str, str] | None,
        actor: Actor | None,
        *,
        length: int,
        work: Path,
    ) -> OtaRelease:
        row = OtaRelease(
            model_name=spec.model_name,
            model_version=spec.model_version,
            target_path="",
            sha256=spec.artifact_sha256,
            length=length,
            drift_reference_sha256=spec.drift_reference_sha256,
            created_by=created_by,
            created_at=utcnow(),
            idempotency_key=idempotency[0] if idempotency else None,
            request_sha256=idempotency[1] if idempotency else "",
        )
        session.add(row)
        session.flush()
        assert row.seq is not None
        base = f"models/{spec.model_name}/r{row.seq}"
        previous = session.exec(
            select(OtaRelease)
            .where(OtaRelease.model_name == spec.model_name, col(OtaRelease.seq) < row.seq)
            .order_by(col(OtaRelease.seq).desc())
        ).first()
        infos, custom = self._release_targets(base, work, spec, row.seq, previous)
        self.repo.set_targets(infos)
        row.target_path, row.custom = infos[-1].path, custom
        session.add(row)
        session.commit()
        session.refresh(row)
        logger.info(
            "release published seq=%d model=%s@%s sha256=%s",
            row.seq,
            row.model_name,
            row.model_version,
            row.sha256[:12],
        )
        details = {"model": row.model_name, "model_version": row.model_version, "sha256": row.sha256,
                   "profiles": list(spec.profiles), "created_by": created_by}  # fmt: skip
        record_change(self.audit, actor or Actor.system("ota"), "release.published",
                      Target("release", str(row.seq)), details)  # fmt: skip
        return row

    def _release_targets(
        self, base: str, work: Path, spec: ReleaseCreate, seq: int, previous: OtaRelease | None
    ) -> tuple[list[TargetFile], dict[str, Any]]:
        """Build and store the release's target files from blobs copied into the spool dir `work`
        (the chunker picks ONNX parsing from the release file name's suffix)."""
        suffix = Path(spec.filename).suffix
        artifact = self.fetch_blob(spec.artifact_sha256, work / f"artifact{suffix}")
        layout = build_layout(artifact)
        patches: dict[int, PatchRef] = {}
        if previous is not None and self.store.exists(blob_key(previous.sha256)):
            old = self.fetch_blob(previous.sha256, work / f"previous{suffix}")
            patches = add_patches(layout, artifact, build_layout(old), old, work / "patches")
            if (work / "patches").is_dir():  # absent when every patch rides inline in the manifest
                for patch in sorted((work / "patches").iterdir()):
                    self.store.put_file_if_absent(f"{self.repo.prefix}/targets/patches/{patch.name}", patch)
        infos: list[TargetFile] = []
        mpath = work / "chunks.bin"  # chunk manifest format 2 (protos/edgeloop/chunk_manifest.py)
        mpath.write_bytes(manifest_bytes(layout, patches))
        infos.append(self.repo.add_target_file(f"{base}/chunks.bin", mpath))
        golden: dict[str, Any] = {}
        if spec.golden_sha256:
            local = self.fetch_blob(spec.golden_sha256, work / "golden.npz")
            infos.append(self.repo.add_target_file(f"{base}/golden.npz", local))
            golden = {"path": f"{base}/golden.npz", "threshold": repr(spec.golden_threshold)}
        warmup = ""
        if spec.warmup_sha256:  # the device warms the model up on it instead of zeros
            warmup = f"{base}/warmup.npz"
            infos.append(
                self.repo.add_target_file(warmup, self.fetch_blob(spec.warmup_sha256, work / "warmup.npz"))
            )
        drift_reference = ""
        if spec.drift_reference_sha256:
            drift_reference = f"{base}/drift_reference.json"
            infos.append(self.repo.add_target_file(drift_reference, work / "drift_reference.json"))
        compressed = ""
        xz = work / "artifact.xz"
        if _compress(artifact, xz) < 0.99 * artifact.stat().st_size:
            compressed = f"{base}/{spec.filename}.xz"
            infos.append(self.repo.add_target_file(compressed, xz))
        custom = {
            "edgeloop": {
                "release_seq": seq,
                "model_name": spec.model_name,
                "model_version": spec.model_version,
                "profiles": spec.profiles,
                "runtime": spec.runtime,
                "compiler_report_sha256": spec.compiler_report_sha256,
                "manifest": f"{base}/chunks.bin",
                "manifest_format": MANIFEST_VERSION,
                "compressed": compressed,
                "golden": golden,
                "drift_reference": drift_reference,
                "warmup": warmup,
                "gates": {k: repr(float(v)) for k, v in spec.gates.items()},  # canonical JSON: no floats
            }
        }
        infos.append(self.repo.add_target_file(f"{base}/{spec.filename}", artifact, custom))
        return infos, custom

    def list_releases(self, *, session: Session) -> list[OtaRelease]:
        return list(session.exec(select(OtaRelease).order_by(col(OtaRelease.seq).desc())))

    def refresh_if_stale(self, now: datetime, *, roles: bool = True) -> None:
        """Re-sign timestamp and snapshot, then with `roles` (the signer's duty; not on a device's
        request path) at most every few minutes the targets, director and device roles, each when
        less than half its lifetime is left."""
        self.repo.refresh_if_stale(now)
        if roles:
            self.repo.refresh_expiring_roles(now)


def _compress(source: Path, dest: Path) -> int:
    """xz (preset 6) of `source`, streamed; returns the compressed size."""
    with source.open("rb") as src, lzma.open(dest, "wb", preset=6) as out:
        while block := src.read(1 << 20):
            out.write(block)
    return dest.stat().st_size


def _check_keys(repo: OtaRepository) -> None:
    """This server's online keys must be the ones the stored root trusts (shared, not forked)."""
    root = repo.root()
    for role in ("targets", "snapshot", "timestamp"):
        ours = {k.keyid for k in repo.keys.roles[role].keys}
        if not ours & set(root.roles[role].keyids):
            raise KeyConfigError(
                f"the {role} keys of this server are not in the root of {repo.store.describe()}: "
                "another replica created that repository; give this one its keys"
            )


def release_json(row: OtaRelease) -> dict[str, Any]:
    return json.loads(row.model_dump_json())  # type: ignore[no-any-return]
