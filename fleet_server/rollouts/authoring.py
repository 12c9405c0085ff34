"""Creating rollouts and the per-model rollout policy.

Owns planning and storing a new rollout (its batches, devices with their release and previous
release, and the holds that keep one device in one active rollout), a registered model's stored
`RolloutPolicy`, and `start_for_model` (the registry's "release this version" as a rollout with
that policy). Does not advance rollouts: starting one is handed to the engine (`start`), which
claims it like any operator event.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from fleet_server.audit.chain import Actor, Target
from fleet_server.audit.port import AuditRecorder
from fleet_server.errors import ConflictError, NotFoundError
from fleet_server.rollouts import targeting
from fleet_server.rollouts.models import Rollout, RolloutBatch, RolloutDevice, RolloutHold, RolloutPolicyRow
from fleet_server.rollouts.planning import BatchSpec, Selector, plan_batches, select_targets
from fleet_server.rollouts.schemas import RolloutCreate, RolloutPolicy
from fleet_server.rollouts.schemas import Selector as RolloutSelector

logger = logging.getLogger(__name__)


class Authoring:
    """Creates rollouts and keeps rollout policies; `start(rollout_id, actor)` starts one."""

    def __init__(
        self,
        *,
        db: Engine,
        audit: AuditRecorder,
        clock: Callable[[], datetime],
        start: Callable[[str, Actor], None],
    ) -> None:
        self.db = db
        self.audit = audit
        self.clock = clock
        self.start = start

    def create(self, spec: RolloutCreate, actor: Actor) -> str:
        """Plan and store a rollout (a draft, started at once when `spec.start`); returns its id.

        Raises:
            NotFoundError: a release does not exist.
            InvalidRequestError: releases overlap on a profile, a selected profile has no artifact,
                no device matches, batches that do not add up.
            ConflictError: a matching device is held by another active rollout.
        """
        bspec = BatchSpec(
            percents=tuple(spec.batches.percents),
            counts=tuple(spec.batches.counts),
            min_per_batch=spec.batches.min_per_batch,
            seed=spec.batches.seed,
            budget=dict(spec.batches.budget),
        )
        bspec.validate()
        rid = f"ro_{secrets.token_hex(8)}"
        now = self.clock()
        with Session(self.db, expire_on_commit=False) as s:
            releases, by_profile = targeting.releases(s, spec.releases)
            selector = Selector(labels=dict(spec.selector.labels), profiles=frozenset(spec.selector.profiles))
            candidates = targeting.candidates(s)
            if spec.selector.devices:
                named = set(spec.selector.devices)
                unknown = sorted(named - {c.device_id for c in candidates})
                if unknown:
                    raise NotFoundError(f"unknown or revoked device(s): {', '.join(unknown[:5])}")
                candidates = [c for c in candidates if c.device_id in named]
            profiles = targeting.release_profiles(by_profile, candidates)
            held = {h.device_id: h.rollout_id for h in s.exec(select(RolloutHold)).all()}
            wanted = select_targets(candidates, selector, profiles)
            busy = sorted(c.device_id for c in wanted.devices if c.device_id in held)
            if busy:
                raise ConflictError(
                    f"overlapping rollouts: {len(busy)} matching device(s) are in another active rollout "
                    f"(e.g. {busy[0]} in {held[busy[0]]}); narrow the selector or end that rollout"
                )
            plan = plan_batches(wanted.devices, bspec)
            previous = targeting.previous_releases(
                s, [d for b in plan for d in b], [r.seq or 0 for r in releases]
            )
            profile_of = {c.device_id: c.profile for c in wanted.devices}
            row = Rollout(
                id=rid,
                name=spec.name or rid,
                release_seq=releases[0].seq or 0,
                selector=spec.selector.model_dump(mode="json"),
                batch_spec={
                    **spec.batches.model_dump(mode="json"),
                    "windows": spec.windows.model_dump(mode="json"),
                },
                gates=spec.gates.model_dump(mode="json"),
                on_breach=spec.on_breach,
                batches=len(plan),
                releases=[targeting.release_entry(r) for r in releases],
                created_by=actor.name[:128],
                created_at=now,
                updated_at=now,
            )
            s.add(row)
            for i, devices in enumerate(plan):
                s.add(RolloutBatch(rollout_id=rid, index=i, devices=devices))
                for d in devices:
                    rel = targeting.pick(by_profile, profile_of[d])
                    s.add(
                        RolloutDevice(
                            rollout_id=rid,
                            device_id=d,
                            batch=i,
                            profile=profile_of[d],
                            release_seq=rel,
                            previous_release_seq=previous.get(d),
                            updated_at=now,
                        )
                    )
                    s.add(RolloutHold(device_id=d, rollout_id=rid))
            try:
                s.commit()
            except IntegrityError as err:  # a concurrent create took one of the devices
                raise ConflictError(
                    "overlapping rollouts: a matching device was just taken by another rollout"
                ) from err
        self.audit.record(
            actor,
            "rollout.create",
            Target("rollout", rid),
            {
                "releases": [r.seq for r in releases],
                "batches": [len(b) for b in plan],
                "excluded": wanted.excluded,
                "on_breach": spec.on_breach,
                "selector": row.selector,
            },
        )
        logger.info("rollout created id=%s batches=%s", rid, [len(b) for b in plan])
        if spec.start:
            self.start(rid, actor)
        return rid

    def policy(self, model_name: str) -> tuple[RolloutPolicy, bool]:
        """A registered model's rollout policy and whether one is stored (else the default)."""
        with Session(self.db) as s:
            row = s.get(RolloutPolicyRow, model_name)
            if row is None:
                return RolloutPolicy(), False
            return RolloutPolicy.model_validate(row.policy), True

    def set_policy(self, model_name: str, policy: RolloutPolicy, actor: Actor) -> None:
        BatchSpec(
            percents=tuple(policy.batches.percents),
            counts=tuple(policy.batches.counts),
            min_per_batch=policy.batches.min_per_batch,
            budget=dict(policy.batches.budget),
        ).validate()
        with Session(self.db) as s:
            row = s.get(RolloutPolicyRow, model_name) or RolloutPolicyRow(model_name=model_name)
            row.policy, row.updated_by, row.updated_at = (
                policy.model_dump(mode="json"),
                actor.name[:128],
                self.clock(),
            )
            s.add(row)
            s.commit()
        self.audit.record(
            actor, "rollout.policy", Target("model", model_name), policy.model_dump(mode="json")
        )

    def start_for_model(
        self, *, model_name: str, version: str, releases: list[int], devices: list[str], actor: Actor
    ) -> dict[str, Any]:
        """A rollout of a registry version's releases (one per profile) to `devices`, with the
        model's rollout policy; returns {"rollout_id", "releases": {seq: {"deployment_id",
        "devices"}}} (the deployment of the first batch)."""
        policy, _ = self.policy(model_name)
        spec = RolloutCreate(
            name=f"{model_name}@{version}"[:128],
            releases=releases,
            selector=RolloutSelector(devices=sorted(set(devices))),
            batches=policy.batches,
            gates=policy.gates,
            on_breach=policy.on_breach,
        )
        rid = self.create(spec, actor)
        with Session(self.db) as s:
            rows = s.exec(select(RolloutDevice).where(RolloutDevice.rollout_id == rid)).all()
            out: dict[int, dict[str, Any]] = {}
            for d in sorted(rows, key=lambda r: r.device_id):
                entry = out.setdefault(d.release_seq or 0, {"deployment_id": "", "devices": []})
                entry["devices"].append(d.device_id)
                if d.deployment_id and not entry["deployment_id"]:
                    entry["deployment_id"] = d.deployment_id
        return {"rollout_id": rid, "releases": out}
