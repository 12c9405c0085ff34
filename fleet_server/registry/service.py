"""`ModelRegistry`: versions with lineage, compiled with their budgets, released through signed OTA.

Owns the life of a version: register (an upload, or the aggregated head of a federated run
spliced into its parent's graph), compile (one job at a time in a worker thread, through the
`Compiler` port, with the budgets, data sets and compile settings (batched inputs, micro-batch
size; checked against the model when registered) the version inherits from its parent), judge
(a descendant whose compiled accuracy falls below its parent's by more than the budget is
rejected), and release (one signed release per device profile, deployed to the version's cohort:
automatically for federated versions when the model's `auto_release` policy is on, otherwise when
an operator approves). Blobs live in the OTA artifact store (the compiler subprocess gets local
copies); it does not sign anything itself. With replicas, only the holder of the
`registry-compile` lease compiles (`leases`): it queues, when it acquires the lease, every version
left registered or compiling (by a holder that died), then every version registered on any
replica (polled from the database); a holder that lost the lease writes no result (fenced).
Every status change and approval is recorded in the audit log after it committed (the operator
for register/approve, `system:registry` for the compile worker and the auto-release policy).
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from fleet_server.audit.chain import Actor, Target
from fleet_server.audit.port import AuditRecorder, MemoryAuditLog, record_change
from fleet_server.coordination.leases import LeaseGrant, LeaseLost, LeaseStore, Singleton
from fleet_server.errors import ConflictError, InvalidRequestError, NotFoundError
from fleet_server.models import Device, utcnow
from fleet_server.ota.models import ReleaseCreate
from fleet_server.ota.releases import OtaService
from fleet_server.registry.compile import CompileFailed, CompileJob, Compiler
from fleet_server.registry.head import read_head, splice_head
from fleet_server.registry.models import (
    AWAITING_APPROVAL,
    COMPILED,
    COMPILING,
    FAILED,
    REGISTERED,
    REJECTED,
    RELEASED,
    ModelVersion,
    RegisteredModel,
)
from fleet_server.registry.schemas import COMPILE_SETTINGS, VersionCreate
from fleet_server.registry.signature import check_batched_inputs

logger = logging.getLogger(__name__)

_STOP = -1
SYSTEM = Actor.system("registry")
LEASE = "registry-compile"


class ModelRegistry:
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

    # ------------------------------------------------------------ worker

    def start(self) -> None:
        """Start the worker: at once without leases, else when this replica holds the lease."""
        if self._singleton is not None:
            self._singleton.start()
            return
        self._start_worker()

    def stop(self, timeout: float = 5.0) -> None:
        if self._singleton is not None:
            self._singleton.stop()  # on_lost stops the worker, then the lease is released
        self._stop_worker(timeout)

    def idle(self) -> bool:
        return self._jobs.unfinished_tasks == 0

    @property
    def compiles_here(self) -> bool:
        """Whether this replica runs the compile worker now."""
        return self._thread is not None

    def _acquired(self, grant: LeaseGrant) -> None:
        self._grant = grant
        self._start_worker()

    def _lost(self) -> None:
        self._grant = None
        self._stop_worker(0.0)  # a compile in flight finishes, but its results are fenced

    def _start_worker(self) -> None:
        """Requeue versions a previous holder or process left registered or compiling; run the worker."""
        if self._thread is not None:
            return
        self._enqueue_pending()
        self._thread = threading.Thread(target=self._work_loop, name="registry-compile", daemon=True)
        self._thread.start()

    def _stop_worker(self, timeout: float) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(_STOP)
            if timeout:
                thread.join(timeout)

    def _enqueue_pending(self) -> None:
        with Session(self._engine) as s:
            pending = s.exec(
                select(ModelVersion).where(col(ModelVersion.status).in_([REGISTERED, COMPILING]))
            )
            for version in pending:
                if version.compile_spec.get("profiles"):
                    self._enqueue(_id(version))

    def _enqueue(self, version_id: int) -> None:
        with self._queued_lock:
            if version_id in self._queued:
                return
            self._queued.add(version_id)
        self._jobs.put(version_id)

    def _work_loop(self) -> None:
        while True:
            try:
                version_id = self._jobs.get(timeout=self._poll_s if self._leases is not None else None)
            except queue.Empty:  # versions registered on other replicas
                try:
                    self._enqueue_pending()
                except Exception:
                    logger.exception("registry: polling for registered versions failed")
                continue
            if version_id == _STOP:
                self._jobs.task_done()
                return
            try:
                self.process(version_id)
            except LeaseLost as err:
                logger.warning("registry compile fenced version_id=%d: %s", version_id, err)
            except Exception:  # one bad version must not stop the worker
                logger.exception("registry job failed version_id=%d", version_id)
            finally:
                with self._queued_lock:
                    self._queued.discard(version_id)
                self._jobs.task_done()

    def _fence(self, session: Session) -> None:
        """With leases: raise LeaseLost unless this replica still holds `registry-compile`."""
        if self._leases is None:
            return
        grant = self._grant
        if grant is None:
            raise LeaseLost(f"{LEASE} is not held by this replica")
        self._leases.guard(session, grant)

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
            self._enqueue(_id(version))  # else the lease holder polls it from the database
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
            version.accuracy = _float(report.get("reference", {}).get("accuracy"))
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

    def approve(
        self,
        session: Session,
        name: str,
        version_no: int,
        *,
        devices: list[str] | None,
        created_by: str,
        actor: Actor = SYSTEM,
    ) -> ModelVersion:
        """Release a compiled version to `devices` (default: its cohort).

        Raises:
            ConflictError: the version is not waiting for approval.
            InvalidRequestError: no device to release to.
        """
        version = self.get(session, name, version_no)
        if version.status not in (AWAITING_APPROVAL, COMPILED):
            raise ConflictError(f"{name}@{version_no} is {version.status}, not awaiting approval")
        targets = devices if devices is not None else self.cohort_devices(session, version)
        if not targets:
            raise InvalidRequestError(f"no devices to release {name}@{version_no} to: name them")
        self._release(session, version, targets, created_by=created_by, actor=actor)
        self._record(actor, version, "approved", devices=len(targets), named=devices is not None)
        return version

    def cohort_devices(self, session: Session, version: ModelVersion) -> list[str]:
        """Who a federated version goes to: its run's cohort (listed devices, or labels + profile).

        An uploaded version has no cohort: it goes only to devices an operator names (never, by
        default, to the whole fleet).
        """
        if "cohort" not in version.lineage:
            return []
        cohort: dict[str, Any] = dict(version.lineage.get("cohort") or {})
        active = session.exec(select(Device).where(Device.status == "active")).all()
        if cohort.get("devices"):
            wanted = set(cohort["devices"])
            return sorted(d.id for d in active if d.id in wanted)
        labels = dict(str(item).split("=", 1) for item in cohort.get("labels", []) if "=" in str(item))
        profile = str(cohort.get("profile") or "")
        return sorted(
            d.id
            for d in active
            if (not profile or d.profile == profile) and all(d.labels.get(k) == v for k, v in labels.items())
        )

    def _parent_recipes(self, session: Session, version: ModelVersion) -> dict[str, str]:
        """The recipe each profile's artifact of the parent was built with: the compiler keeps it
        when it still passes and is as fast (stable numerics on live inputs, smaller deltas)."""
        if version.parent_version is None:
            return {}
        parent = session.exec(
            select(ModelVersion).where(
                ModelVersion.name == version.name, ModelVersion.version == version.parent_version
            )
        ).first()
        if parent is None:
            return {}
        arts = parent.artifacts.items()
        return {p: str(a["recipe"]) for p, a in arts if isinstance(a, dict) and a.get("recipe")}

    def _job(self, version: ModelVersion, prefer: dict[str, str] | None = None) -> CompileJob:
        out = self._work / version.name / f"v{version.version}"
        inputs = out / "inputs"
        shutil.rmtree(out, ignore_errors=True)
        inputs.mkdir(parents=True)
        model = inputs / "model.onnx"
        self._ota.fetch_blob(version.artifact_sha256, model)
        calib, evaluation = inputs / "calib.npz", inputs / "eval.npz"
        self._ota.fetch_blob(version.datasets["calib_sha256"], calib)
        self._ota.fetch_blob(version.datasets["eval_sha256"], evaluation)
        spec = version.compile_spec
        budgets = {k: float(v) for k, v in spec.items() if k not in COMPILE_SETTINGS}
        batched = spec.get("batched_inputs")
        return CompileJob(
            model,
            tuple(spec["profiles"]),
            calib,
            evaluation,
            out / "build",
            budgets,
            dict(prefer or {}),
            batched_inputs=None if batched is None else tuple(str(n) for n in batched),
            micro_batch=None if spec.get("micro_batch") is None else int(spec["micro_batch"]),
            drift_budget_per_10k=None
            if spec.get("drift_budget_per_10k") is None
            else float(spec["drift_budget_per_10k"]),
        )

    def _adopt_artifacts(self, build: Path, report: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        report_sha = self._store_file(build / "report.json")
        for profile, entry in report.get("profiles", {}).items():
            art = entry.get("artifact")
            if not art:
                continue
            chosen: dict[str, Any] = next(
                (c for c in entry.get("candidates", []) if c["recipe"] == entry.get("chosen")), {}
            )
            metrics = chosen.get("metrics") or {}
            drift = next(
                (
                    p
                    for p in (build / profile / "drift_reference.json", build / "drift_reference.json")
                    if p.exists()
                ),
                None,
            )
            out[profile] = {
                "artifact_sha256": self._store_file(build / art["path"]),
                "filename": Path(art["path"]).name,
                "runtime": art.get("runtime", ""),
                "size_bytes": art.get("size_bytes"),
                "recipe": entry.get("chosen"),
                "accuracy": _float(metrics.get("accuracy")),
                "agreement": _float(metrics.get("agreement")),
                "report_sha256": report_sha,
                "drift_reference_sha256": self._store_file(drift) if drift is not None else "",
                # the batches quality was judged at and where the micro-batch size came from
                "quality_batch": entry.get("quality_batch"),
            }
        return out

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

    def _release(
        self, session: Session, version: ModelVersion, devices: list[str], *, created_by: str, actor: Actor
    ) -> None:
        by_id = {d.id: d for d in session.exec(select(Device).where(col(Device.id).in_(devices))).all()}
        releases: dict[str, Any] = {}
        skipped = sorted(d for d in devices if d not in by_id or by_id[d].profile not in version.artifacts)
        for profile, art in sorted(version.artifacts.items()):
            targets = sorted(d for d, dev in by_id.items() if dev.profile == profile)
            if not targets:
                continue
            spec = ReleaseCreate(
                model_name=version.name,
                model_version=str(version.version),
                artifact_sha256=art["artifact_sha256"],
                filename=art["filename"],
                profiles=[profile],
                compiler_report_sha256=art.get("report_sha256", ""),
                golden_sha256=str(version.datasets.get("golden_sha256", "")),
                golden_threshold=float(version.datasets.get("golden_threshold", 0.0)),
                gates=_shadow_gates(session, self, version, profile),
                drift_reference_sha256=art.get("drift_reference_sha256", ""),
                warmup_sha256=str(version.datasets.get("warmup_sha256", "")),
            )
            release = self._ota.publish(session=session, spec=spec, created_by=created_by, actor=actor)
            assert release.seq is not None
            if self._rollouts is not None:  # deployed batch by batch by the rollout engine
                releases[profile] = {"release_seq": release.seq, "deployment_id": "", "devices": targets}
                continue
            deployment = self._ota.deploy(
                session=session, release_seq=release.seq, device_ids=targets, actor=actor
            )
            if self._notify is not None:
                for device_id in targets:
                    self._notify(device_id)
            releases[profile] = {"release_seq": release.seq, "deployment_id": deployment, "devices": targets}
        if not releases:
            raise InvalidRequestError(
                f"none of {len(devices)} device(s) has a profile in {name_list(version.artifacts)}"
            )
        if self._rollouts is not None:
            self._start_rollout(version, releases, actor)
        version.releases = releases
        note = f"released to {sum(len(r['devices']) for r in releases.values())} device(s)"
        self._set(session, version, RELEASED, note + (f"; skipped {skipped[:5]}" if skipped else ""), actor)

    def _start_rollout(self, version: ModelVersion, releases: dict[str, Any], actor: Actor) -> None:
        """One rollout of the version's releases with the model's rollout policy; `releases` gets
        the rollout id and the first batch's deployment per profile."""
        assert self._rollouts is not None
        seqs = [int(r["release_seq"]) for r in releases.values()]
        devices = sorted({d for r in releases.values() for d in r["devices"]})
        started = self._rollouts.start_for_model(  # raises (409/422) when the rollout is refused
            model_name=version.name, version=str(version.version), releases=seqs, devices=devices, actor=actor
        )
        for r in releases.values():
            got = started["releases"].get(int(r["release_seq"]), {})
            r["rollout_id"] = started["rollout_id"]
            r["deployment_id"] = str(got.get("deployment_id", ""))
            r["devices"] = list(got.get("devices", r["devices"]))

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

    def _store_bytes(self, data: bytes) -> str:
        upload = self._ota.new_upload()
        try:
            upload.write_bytes(data)
            return self._ota.adopt_blob(upload)[0]
        finally:
            upload.unlink(missing_ok=True)

    def _store_file(self, path: Path) -> str:
        upload = self._ota.new_upload()
        try:
            shutil.copyfile(path, upload)
            return self._ota.adopt_blob(upload)[0]
        finally:
            upload.unlink(missing_ok=True)


# A retrained descendant is meant to change predictions, so its on-device shadow run (candidate vs
# the parent it replaces, on live inputs) cannot demand the 0.9 agreement a re-quantization must
# keep. Two classifiers with accuracies a and b on the same data agree on at least a + b - 1 of it,
# so that bound (on the eval set, less 5 points of slack for live data; never below 0.5) is the
# floor; the golden-set gate still guards accuracy. Override per model with the budgets
# `shadow_min_agreement` / `shadow_max_distance` at registration.
SHADOW_SLACK = 0.05
DESCENDANT_MAX_DISTANCE = 0.5


def _shadow_gates(
    session: Session, registry: ModelRegistry, version: ModelVersion, profile: str
) -> dict[str, float]:
    gates: dict[str, float] = {}
    if version.parent_version is not None:
        parent = registry.get(session, version.name, version.parent_version)
        before = (parent.artifacts.get(profile) or {}).get("accuracy")
        now = (version.artifacts.get(profile) or {}).get("accuracy")
        if before is not None and now is not None:
            gates["min_agreement"] = round(max(0.5, float(before) + float(now) - 1 - SHADOW_SLACK), 4)
        else:
            gates["min_agreement"] = 0.5
        gates["max_distance"] = DESCENDANT_MAX_DISTANCE
    for key, value in version.compile_spec.items():
        if key.startswith("shadow_"):
            gates[key.removeprefix("shadow_")] = float(value)
    return gates


class RolloutStarter(Protocol):
    """fleet_server.rollouts.engine.RolloutEngine.start_for_model."""

    def start_for_model(
        self, *, model_name: str, version: str, releases: list[int], devices: list[str], actor: Actor
    ) -> dict[str, Any]: ...


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


def name_list(artifacts: dict[str, Any]) -> str:
    return "[" + ", ".join(sorted(artifacts)) + "]"


def _id(version: ModelVersion) -> int:
    assert version.id is not None
    return version.id


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None
