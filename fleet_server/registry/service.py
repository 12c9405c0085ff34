"""`ModelRegistry`: versions with lineage, compiled with their budgets, released through signed OTA.

Owns the life of a version and its registering and judging verbs: register (an upload, or the
aggregated head of a federated run spliced into its parent's graph; the budgets, data sets and
compile settings (batched inputs, micro-batch size; checked against the model when registered)
are inherited from the parent), process one compile job (compile through the `Compiler` port, then
judge: a descendant whose compiled accuracy falls below its parent's by more than the budget is
rejected; then release automatically for federated versions when the model's `auto_release`
policy is on, otherwise wait for an operator's approval), and the queries. Every status change
and approval is recorded in the audit log after it committed (the operator for register/approve,
`system:registry` for the compile worker and the auto-release policy). It does not sign anything
itself. The other verbs are base classes in their own modules: the compile worker and its
`registry-compile` lease (worker.py), a job's files in and out of the OTA blob store
(compile_files.py) and releasing (releasing.py). Re-exports `RolloutStarter` and `SYSTEM`.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from fleet_server.audit.chain import Actor, Target
from fleet_server.audit.port import AuditRecorder, MemoryAuditLog, record_change
from fleet_server.coordination.leases import LeaseGrant, LeaseStore, Singleton
from fleet_server.errors import ConflictError, InvalidRequestError, NotFoundError
from fleet_server.models import utcnow
from fleet_server.ota.releases import OtaService
from fleet_server.registry.compile import CompileFailed, Compiler
from fleet_server.registry.compile_files import CompileFiles, report_float
from fleet_server.registry.head import read_head, splice_head
from fleet_server.registry.models import (
    AWAITING_APPROVAL,
    COMPILED,
    COMPILING,
    FAILED,
    REGISTERED,
    REJECTED,
    ModelVersion,
    RegisteredModel,
)
from fleet_server.registry.releasing import SYSTEM, Releasing, RolloutStarter
from fleet_server.registry.schemas import VersionCreate
from fleet_server.registry.signature import check_batched_inputs
from fleet_server.registry.worker import LEASE, CompileWorker, row_id

__all__ = ["SYSTEM", "ModelRegistry", "RolloutStarter"]

logger = logging.getLogger(__name__)


class ModelRegistry(CompileWorker, CompileFiles, Releasing):
    """The registry service; `start()` runs the compile worker, `stop()` ends it."""

    def __init__(
        self,
        *,
        engine: Engine,
        ota: OtaService,
        work_dir: Path,
        compiler: Compiler,
        notify: Callable[[str], None] | None = None,
        audit: AuditRecorder | None = None,
        rollouts: RolloutStarter | None = None,
        leases: LeaseStore | None = None,
        holder: str = "",
        lease_ttl_s: float = 6.0,
        poll_s: float = 2.0,
    ) -> None:
        self._engine = engine
        self._rollouts = rollouts  # None: a release is deployed to all its devices at once
        self._audit: AuditRecorder = audit if audit is not None else MemoryAuditLog()
        self._notify = notify  # push the new desired state to a connected device now
        self._ota = ota
        self._work = work_dir
        self._compiler = compiler
        self._jobs: queue.Queue[int] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._leases = leases  # None: this process is the only compile worker
        self._poll_s = poll_s
        self._queued: set[int] = set()  # queued or running on this replica
        self._queued_lock = threading.Lock()
        self._singleton = (
            Singleton(
                leases, LEASE, holder, ttl_s=lease_ttl_s, on_acquired=self._acquired, on_lost=self._lost
            )
            if leases is not None
            else None
        )
        self._grant: LeaseGrant | None = None

    # ------------------------------------------------------------ register

    def register(
        self, session: Session, spec: VersionCreate, created_by: str, *, actor: Actor = SYSTEM
    ) -> ModelVersion:
        """A new version from uploaded blobs; queued for compiling when it has profiles.

        Raises:
            NotFoundError: a blob or the parent version does not exist.
            InvalidRequestError: not an ONNX model, or no data sets to compile with.
        """
        model_bytes = self._ota.blob_bytes(spec.artifact_sha256)
        read_head(model_bytes)  # a registry model must be a classifier with a trainable head
        parent = self._parent(session, spec.name, spec.parent_version)
        compile_spec = _compile_spec(spec, parent)
        if "batched_inputs" in compile_spec:
            check_batched_inputs(
                model_bytes, compile_spec["batched_inputs"], inherited=spec.batched_inputs is None
            )
        datasets = {k: v for k, v in spec.datasets().items() if v}
        if parent is not None:
            datasets = {**parent.datasets, **datasets}
        for key in ("calib_sha256", "eval_sha256", "golden_sha256", "warmup_sha256"):
            if datasets.get(key):
                self._ota.blob_size(str(datasets[key]))
        if compile_spec and not (datasets.get("calib_sha256") and datasets.get("eval_sha256")):
            raise InvalidRequestError("compiling needs calibration and evaluation sets (calib, eval)")
        return self._new_version(
            session,
            name=spec.name,
            parent=parent,
            source="upload",
            artifact_sha256=spec.artifact_sha256,
            compile_spec=compile_spec,
            datasets=datasets,
            lineage=dict(spec.lineage),
            created_by=created_by,
            actor=actor,
        )

    def register_federated(
        self, *, name: str, parent_version: int | None, arrays: dict[str, np.ndarray], lineage: dict[str, Any]
    ) -> ModelVersion:
        """The aggregated head of a run, spliced into its parent's graph, as the next version."""
        with Session(self._engine) as s:
            parent = self._parent(s, name, parent_version)
            assert parent is not None
            full = {**lineage, "parent_version": parent.version, "parent_sha256": parent.artifact_sha256}
            spliced = splice_head(self._ota.blob_bytes(parent.artifact_sha256), arrays, full)
            sha = self._store_bytes(spliced)
            return self._new_version(
                s,
                name=name,
                parent=parent,
                source="federated",
                artifact_sha256=sha,
                compile_spec=dict(parent.compile_spec),
                datasets=dict(parent.datasets),
                lineage=full,
                created_by="federated:" + str(lineage.get("run_id", ""))[:32],
                actor=Actor.system("federated"),
            )

    def _new_version(
        self, session: Session, *, name: str, parent: ModelVersion | None, actor: Actor, **fields: Any
    ) -> ModelVersion:
        if session.get(RegisteredModel, name) is None:
            session.add(RegisteredModel(name=name, created_by=fields["created_by"], created_at=utcnow()))
            session.flush()
        top = session.exec(select(func.max(ModelVersion.version)).where(ModelVersion.name == name)).one()
        now = utcnow()
        version = ModelVersion(
            name=name,
            version=int(top or 0) + 1,
            parent_version=parent.version if parent is not None else None,
            created_at=now,
            updated_at=now,
            **fields,
        )
        session.add(version)
        session.commit()
        session.refresh(version)
        logger.info(
            "model version registered %s@%d source=%s parent=%s",
            name,
            version.version,
            version.source,
            version.parent_version,
        )
        self._record(actor, version, "registered", source=version.source, parent=version.parent_version,
                     artifact_sha256=version.artifact_sha256)  # fmt: skip
        if version.compile_spec.get("profiles") and (self._leases is None or self.compiles_here):
            self._enqueue(row_id(version))  # else the lease holder polls it from the database
        return version

    def _parent(self, session: Session, name: str, version: int | None) -> ModelVersion | None:
        if version is None:
            return self.latest(session, name, required=False)
        return self.get(session, name, version)

    # ------------------------------------------------------------ queries

    def get(self, session: Session, name: str, version: int) -> ModelVersion:
        row = session.exec(
            select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version)
        ).first()
        if row is None:
            raise NotFoundError(f"model {name}@{version} not found")
        return row

    def latest(self, session: Session, name: str, *, required: bool = True) -> ModelVersion | None:
        row = session.exec(
            select(ModelVersion).where(ModelVersion.name == name).order_by(col(ModelVersion.version).desc())
        ).first()
        if row is None and required:
            raise NotFoundError(f"no model named {name!r} in the registry")
        return row

    def versions(self, session: Session, name: str | None = None) -> Sequence[ModelVersion]:
        stmt = select(ModelVersion).order_by(col(ModelVersion.name), col(ModelVersion.version).desc())
        if name is not None:
            stmt = stmt.where(ModelVersion.name == name)
        return session.exec(stmt).all()

    def head(
        self, session: Session, name: str, version: int | None
    ) -> tuple[ModelVersion, dict[str, np.ndarray]]:
        """The version a federated run starts from (default: newest), and its head arrays."""
        row = self.get(session, name, version) if version is not None else self.latest(session, name)
        assert row is not None
        return row, read_head(self._ota.blob_bytes(row.artifact_sha256))

    def set_policy(self, session: Session, name: str, *, auto_release: bool) -> RegisteredModel:
        model = session.get(RegisteredModel, name)
        if model is None:
            raise NotFoundError(f"no model named {name!r} in the registry")
        model.auto_release = auto_release
        session.add(model)
        session.commit()
        session.refresh(model)
        return model

    # ------------------------------------------------------------ compile, judge, release

    def process(self, version_id: int) -> None:
        """Compile one version, judge it against its parent, and release it if policy says so."""
        with Session(self._engine) as s:
            version = s.get(ModelVersion, version_id)
            if version is None or version.status not in (REGISTERED, COMPILING):
                return
            self._fence(s)
            self._set(s, version, COMPILING, "")
            job = self._job(version, prefer=self._parent_recipes(s, version))
        try:
            report = self._compiler.build(job)
        except CompileFailed as err:
            with Session(self._engine) as s:
                version = s.get(ModelVersion, version_id)
                assert version is not None
                self._fence(s)
                self._set(s, version, FAILED, str(err))
            logger.warning("compile failed version_id=%d: %s", version_id, err)
            return
        with Session(self._engine) as s:
            version = s.get(ModelVersion, version_id)
            assert version is not None
            self._fence(s)
            version.artifacts = self._adopt_artifacts(job.out, report)
            version.accuracy = report_float(report.get("reference", {}).get("accuracy"))
            verdict = self._judge(s, version)
            if verdict:
                self._set(s, version, REJECTED, verdict)
                return
            self._set(s, version, COMPILED, "")
            model = s.get(RegisteredModel, version.name)
            if version.source == "federated" and model is not None and model.auto_release:
                targets = self.cohort_devices(s, version)
                try:
                    self._release(s, version, targets, created_by="policy:auto_release", actor=SYSTEM)
                except (ConflictError, InvalidRequestError) as err:  # e.g. its devices are in a rollout
                    s.rollback()
                    self._set(s, version, AWAITING_APPROVAL, f"auto-release refused: {err}")
                    return
                self._record(SYSTEM, version, "auto_approved", policy="auto_release", devices=len(targets))
            else:
                self._set(
                    s, version, AWAITING_APPROVAL, "compiled inside its budgets; release needs approval"
                )

    def _judge(self, session: Session, version: ModelVersion) -> str:
        """Empty when the version may be released; else why not (compared per profile to the parent)."""
        if not version.artifacts:
            return "the compiler produced no artifact"
        if version.parent_version is None:
            return ""
        parent = self.get(session, version.name, version.parent_version)
        drop = float(version.compile_spec.get("max_accuracy_drop", 0.01))
        for profile, art in version.artifacts.items():
            before = (parent.artifacts.get(profile) or {}).get("accuracy")
            now = art.get("accuracy")
            if before is not None and now is not None and now < before - drop:
                return (
                    f"{profile}: accuracy {now:.4f} is below parent v{parent.version}'s {before:.4f} - {drop}"
                )
        return ""

    # ------------------------------------------------------------ helpers

    def _set(
        self, session: Session, version: ModelVersion, status: str, detail: str, actor: Actor = SYSTEM
    ) -> None:
        before = version.status
        version.status, version.detail, version.updated_at = status, detail[:1024], utcnow()
        session.add(version)
        session.commit()
        session.refresh(version)
        logger.info("model version %s@%d -> %s %s", version.name, version.version, status, detail)
        self._record(actor, version, status, previous=before, detail=version.detail)

    def _record(self, actor: Actor, version: ModelVersion, what: str, **details: Any) -> None:
        """Audit `model_version.<what>` for a change that has committed (never raises)."""
        target = Target("model_version", f"{version.name}@{version.version}")
        record_change(self._audit, actor, f"model_version.{what}", target, details)


def _compile_spec(spec: VersionCreate, parent: ModelVersion | None) -> dict[str, Any]:
    """The request's compile spec, else the parent's (inherited whole), with this request's
    compile settings on top.

    Raises:
        InvalidRequestError: compile settings but no profiles to compile for (given or inherited).
    """
    compile_spec = {"profiles": spec.profiles, **spec.budgets} if spec.profiles else {}
    if parent is not None and not compile_spec:
        compile_spec = dict(parent.compile_spec)
    overrides = spec.compile_overrides()
    if overrides and not compile_spec.get("profiles"):
        raise InvalidRequestError(
            f"{' and '.join(sorted(overrides))}: compile settings need profiles to compile for "
            "(give profiles, or register under a parent version that has them)"
        )
    return compile_spec | overrides
