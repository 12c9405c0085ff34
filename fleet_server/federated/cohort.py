"""Cohort selection from fleet state: which online devices may take part in a run.

A device qualifies when it is active, matches the run's labels and profile, reported itself
able to train (idle / charging / unmetered, from its `Tasks` stream), and is not excluded by the
drift policy hook (`fleet_server.drift.policy.drift_policy`: anomalous devices are kept out of
training; `drifted_only` restricts the run to the shifted devices of a drifted cohort). With
`max_devices`, a fresh uniform sample of at most that many eligible devices is offered each time
the strategy asks (each round), so a large fleet does not put every device into every round.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlmodel import Session, select

from fleet_server.drift.policy import OPEN_RETRAINING_ROUND, DriftPolicy, drift_policy
from fleet_server.models import Device

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CohortSpec:
    labels: dict[str, str] = field(default_factory=dict)
    profile: str = ""
    require_conditions: tuple[str, ...] = ()  # e.g. ("idle", "charging", "unmetered")
    use_drift_policy: bool = True
    drifted_only: bool = False
    max_devices: int = 0  # 0 = every eligible device


class CohortFilter:
    """Callable `online device ids -> eligible device ids`, cached for `ttl_s`."""

    def __init__(
        self,
        *,
        engine: Engine,
        spec: CohortSpec,
        conditions: Callable[[str], dict[str, float]],
        policy: DriftPolicy = drift_policy,
        ttl_s: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        self._engine = engine
        self._policy = policy
        self._spec = spec
        self._conditions = conditions
        self._ttl_s = ttl_s
        self._cached: tuple[float, set[str], set[str] | None] | None = None
        self._rng = rng or random.SystemRandom()

    def __call__(self, online: set[str]) -> set[str]:
        allowed, drifted = self._fleet_view()
        out = {d for d in online & allowed if drifted is None or d in drifted}
        ready = {
            d
            for d in out
            if all(self._conditions(d).get(c, 0.0) >= 0.5 for c in self._spec.require_conditions)
        }
        if 0 < self._spec.max_devices < len(ready):
            return set(self._rng.sample(sorted(ready), self._spec.max_devices))
        return ready

    def _fleet_view(self) -> tuple[set[str], set[str] | None]:
        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < self._ttl_s:
            return self._cached[1], self._cached[2]
        with Session(self._engine) as s:
            devices = s.exec(select(Device).where(Device.status == "active")).all()
            allowed = {d.id for d in devices if self._matches(d)}
            drifted = self._apply_drift(s, allowed) if self._spec.use_drift_policy else None
        self._cached = (now, allowed, drifted)
        return allowed, drifted

    def _matches(self, device: Device) -> bool:
        if self._spec.profile and device.profile != self._spec.profile:
            return False
        return all(device.labels.get(k) == v for k, v in self._spec.labels.items())

    def _apply_drift(self, session: Session, allowed: set[str]) -> set[str] | None:
        actions = self._policy(session)
        for action in actions:
            allowed -= set(action.exclude_devices)
        if not self._spec.drifted_only:
            return None
        drifted = {d for a in actions if a.action == OPEN_RETRAINING_ROUND for d in a.include_devices}
        logger.info("cohort restricted to drifted devices count=%d", len(drifted))
        return drifted
