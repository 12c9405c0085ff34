"""Releasing a judged version: one signed release per device profile, deployed to its devices.

Owns approval (by an operator, or the `auto_release` policy calling `_release`), who a version
goes to (its federated run's cohort; an uploaded version only to devices an operator names), the
shadow gates a release carries (looser for a retrained descendant than for a re-quantization), and
handing the releases to the rollout engine (`RolloutStarter`) or, without one, deploying them to
all their devices at once. Does not sign or deploy itself (`OtaService`) nor compile or judge
(service.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from sqlmodel import Session, col, select

from fleet_server.audit.chain import Actor
from fleet_server.errors import ConflictError, InvalidRequestError
from fleet_server.models import Device
from fleet_server.ota.models import ReleaseCreate
from fleet_server.ota.releases import OtaService
from fleet_server.registry.models import AWAITING_APPROVAL, COMPILED, RELEASED, ModelVersion

SYSTEM = Actor.system("registry")


class Releasing:
    """The release half of `ModelRegistry` (a base class; its `__init__` sets the state below)."""

    _ota: OtaService
    _rollouts: RolloutStarter | None
    _notify: Callable[[str], None] | None

    if TYPE_CHECKING:

        def get(self, session: Session, name: str, version: int) -> ModelVersion: ...
        def _set(
            self, session: Session, version: ModelVersion, status: str, detail: str, actor: Actor = SYSTEM
        ) -> None: ...
        def _record(self, actor: Actor, version: ModelVersion, what: str, **details: Any) -> None: ...

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


# A retrained descendant is meant to change predictions, so its on-device shadow run (candidate vs
# the parent it replaces, on live inputs) cannot demand the 0.9 agreement a re-quantization must
# keep. Two classifiers with accuracies a and b on the same data agree on at least a + b - 1 of it,
# so that bound (on the eval set, less 5 points of slack for live data; never below 0.5) is the
# floor; the golden-set gate still guards accuracy. Override per model with the budgets
# `shadow_min_agreement` / `shadow_max_distance` at registration.
SHADOW_SLACK = 0.05
DESCENDANT_MAX_DISTANCE = 0.5


def _shadow_gates(
    session: Session, registry: Releasing, version: ModelVersion, profile: str
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


def name_list(artifacts: dict[str, Any]) -> str:
    return "[" + ", ".join(sorted(artifacts)) + "]"
