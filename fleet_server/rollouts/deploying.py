"""The two effects that reach devices: assigning a batch, and rolling a rollout's devices back.

Owns `assign_batch` (deploy each release of the batch to exactly the batch's devices of its
profiles, one transaction per release that commits the OTA deployment rows together with the
effect's progress mark) and `start_rollback` (a new release pointing at each previous release's
bytes, published with an idempotency key per (rollout, previous release) and deployed to exactly
the devices that got or may still install the new one). A holder that dies between the mark and
the next step leaves the mark, and the next holder finds the deployment instead of making another.

Does not choose when these run or remove them from the pending list (`effects.py`), and does not
cancel assignments a device has not started (a breach stops further batches; a rollback returns
the devices already assigned).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm.attributes import flag_modified
from sqlmodel import Session, col, select

from fleet_server.ota.models import OtaRelease, ReleaseCreate
from fleet_server.rollouts.leases import Claim, RolloutLeases
from fleet_server.rollouts.models import (
    DEVICE_ASSIGNED,
    DEVICE_COMMITTED,
    DEVICE_PENDING,
    DEVICE_ROLLING_BACK,
    DEVICE_SILENT,
    DEVICE_UNKNOWN,
    Rollout,
    RolloutDevice,
)
from fleet_server.rollouts.ports import OtaPort
from fleet_server.rollouts.rows import batch_row, ms, recover_deployment
from fleet_server.rollouts.targeting import WILDCARD, profiles_of

logger = logging.getLogger(__name__)


class Deployer:
    """Runs `assign_batch` and `start_rollback` effects through the `OtaPort` under a claim."""

    def __init__(
        self,
        *,
        db: Engine,
        leases: RolloutLeases,
        ota: OtaPort,
        notify: Callable[[str], None] | None,
        clock: Callable[[], datetime],
        crash: Callable[[str], None],
    ) -> None:
        self.db = db
        self.leases = leases
        self.ota = ota
        self.notify = notify
        self.clock = clock
        self.crash = crash

    def assign(self, s: Session, claim: Claim, row: Rollout, effect: dict[str, Any]) -> None:
        """Deploy each release of the batch to exactly the batch's devices of its profiles (the
        devices not assigned yet); one transaction per release with the effect's progress."""
        index = int(effect["batch"])
        batch = batch_row(s, row.id, index)
        now = self.clock()
        if batch.assigned_at is None:
            batch.assigned_at = now
            s.add(batch)
        pending = list(
            s.exec(
                select(RolloutDevice).where(
                    RolloutDevice.rollout_id == row.id,
                    RolloutDevice.batch == index,
                    RolloutDevice.status == DEVICE_PENDING,
                )
            ).all()
        )
        by_release: dict[int, list[RolloutDevice]] = {}
        for d in pending:
            if d.release_seq is not None:
                by_release.setdefault(d.release_seq, []).append(d)
        s.commit()
        for seq, devs in sorted(by_release.items()):
            key = f"{seq}:{batch.assigned_at.isoformat() if batch.assigned_at else ''}:{len(devs)}"
            with Session(self.db) as s2:
                self.leases.guard(s2, claim)
                row2 = s2.get(Rollout, row.id)
                assert row2 is not None
                current = dict(row2.pending_effects[0])
                ids = sorted(d.device_id for d in devs)
                if key in current.get("done", []):
                    dep = recover_deployment(s2, ids[0], seq)
                else:
                    _mark(s2, row2, current, key)
                    self.crash("before_deploy")
                    apply = (row2.batch_spec.get("windows") or {}).get("apply") or []
                    extra: dict[str, Any] = {"apply_windows": apply} if apply else {}
                    dep = self.ota.deploy(
                        session=s2, release_seq=seq, device_ids=ids, **extra
                    )  # commits with the mark
                    self.crash("deployed")
                self.leases.guard(s2, claim)
                b = batch_row(s2, row.id, index)
                b.deployments = {**b.deployments, str(seq): dep}
                flag_modified(b, "deployments")
                s2.add(b)
                for d in s2.exec(
                    select(RolloutDevice).where(
                        RolloutDevice.rollout_id == row.id, col(RolloutDevice.device_id).in_(ids)
                    )
                ).all():
                    d.status, d.deployment_id, d.updated_at = DEVICE_ASSIGNED, dep, now
                    s2.add(d)
                s2.commit()
            self._notify(ids)
            logger.info(
                "rollout %s batch %d: release %d deployed to %d device(s) as %s",
                row.id,
                index,
                seq,
                len(ids),
                dep,
            )

    def rollback(self, s: Session, claim: Claim, row: Rollout, effect: dict[str, Any]) -> None:  # noqa: PLR0915
        """A new release pointing at each previous release's bytes, deployed to exactly the
        devices of this rollout that got (or may still install) the new one."""
        now = self.clock()
        exposed = list(
            s.exec(
                select(RolloutDevice).where(
                    RolloutDevice.rollout_id == row.id,
                    col(RolloutDevice.status).in_(
                        [DEVICE_ASSIGNED, DEVICE_COMMITTED, DEVICE_SILENT, DEVICE_ROLLING_BACK]
                    ),
                )
            ).all()
        )
        groups: dict[int, list[str]] = {}
        fallback = _profile_fallback(s, row)
        for d in exposed:
            prev = d.previous_release_seq or fallback.get(d.profile) or fallback.get(WILDCARD)
            if prev is None:
                d.status, d.detail, d.updated_at = (
                    DEVICE_UNKNOWN,
                    "no previous release known to return to",
                    now,
                )
                s.add(d)
                continue
            groups.setdefault(prev, []).append(d.device_id)
        if "_started_ms" not in row.rollback:
            row.rollback = {**row.rollback, "_started_ms": ms(now)}
            flag_modified(row, "rollback")
            s.add(row)
        s.commit()
        for prev, ids in sorted(groups.items()):
            ids.sort()
            with Session(self.db) as s2:
                self.leases.guard(s2, claim)
                row2 = s2.get(Rollout, row.id)
                assert row2 is not None
                old = s2.get(OtaRelease, prev)
                if old is None:
                    continue
                spec = _rollback_spec(old)
                rel, _ = self.ota.publish_once(
                    session=s2,
                    spec=spec,
                    created_by=f"rollout:{row.id}"[:64],
                    idempotency_key=f"rollback-{row.id}-{prev}",
                )
                assert rel.seq is not None
                rel_seq = rel.seq
                self.leases.guard(s2, claim)
                row2 = s2.get(Rollout, row.id)
                assert row2 is not None
                current = dict(row2.pending_effects[0])
                key = f"{prev}"
                if key in current.get("done", []):
                    dep = recover_deployment(s2, ids[0], rel_seq)
                else:
                    _mark(s2, row2, current, key)
                    dep = self.ota.deploy(session=s2, release_seq=rel_seq, device_ids=ids)
                self.leases.guard(s2, claim)
                row2 = s2.get(Rollout, row.id)
                assert row2 is not None
                row2.rollback = {
                    **row2.rollback,
                    str(prev): {"release_seq": rel_seq, "deployment_id": dep, "devices": ids},
                }
                if row2.rollback_release_seq is None:
                    row2.rollback_release_seq = rel_seq
                flag_modified(row2, "rollback")
                s2.add(row2)
                for d in s2.exec(
                    select(RolloutDevice).where(
                        RolloutDevice.rollout_id == row.id, col(RolloutDevice.device_id).in_(ids)
                    )
                ).all():
                    d.status, d.rollback_deployment_id, d.detail, d.updated_at = (
                        DEVICE_ROLLING_BACK,
                        dep,
                        "",
                        now,
                    )
                    s2.add(d)
                s2.commit()
            self._notify(ids)
            logger.info(
                "rollout %s: rollback release %d (bytes of %d) to %d device(s)",
                row.id,
                rel_seq,
                prev,
                len(ids),
            )

    def _notify(self, device_ids: list[str]) -> None:
        """Wake the devices' sessions so they fetch their new desired state now."""
        if self.notify is not None:
            for device_id in device_ids:
                self.notify(device_id)


def _mark(s: Session, row: Rollout, effect: dict[str, Any], done: str) -> None:
    """Record progress inside an effect (committed with the OTA rows by the deploy's commit)."""
    effect = {**effect, "done": [*effect.get("done", []), done]}
    row.pending_effects = [effect, *row.pending_effects[1:]]
    flag_modified(row, "pending_effects")
    s.add(row)


def _profile_fallback(s: Session, row: Rollout) -> dict[str, int]:
    """Per profile: the newest earlier release of the same model for it (devices whose own
    previous release is unknown, e.g. they shipped with the model, return to this one)."""
    out: dict[str, int] = {}
    for r in row.releases:
        earlier = s.exec(
            select(OtaRelease)
            .where(
                OtaRelease.model_name == r["model_name"],
                col(OtaRelease.seq) < int(r["seq"]),
                col(OtaRelease.created_by).not_like("rollout:%"),
            )
            .order_by(col(OtaRelease.seq).desc())
        ).all()
        for profile in r["profiles"] or [WILDCARD]:
            for e in earlier:
                if profile == WILDCARD or not profiles_of(e) or profile in profiles_of(e):
                    assert e.seq is not None
                    out[profile] = e.seq
                    break
    return out


def _rollback_spec(old: OtaRelease) -> ReleaseCreate:
    ours = old.custom.get("edgeloop", {}) if isinstance(old.custom, dict) else {}
    return ReleaseCreate(
        model_name=old.model_name,
        model_version=old.model_version,
        artifact_sha256=old.sha256,
        filename=PurePosixPath(old.target_path).name or "model.onnx",
        profiles=list(ours.get("profiles") or []),
        runtime=dict(ours.get("runtime") or {}),
        drift_reference_sha256=old.drift_reference_sha256,
    )
