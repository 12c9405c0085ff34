"""Drift-triggered retraining: when the drift policy hook says a cohort shifted, open a run for it.

Opt-in by the operator (`POST /federated/auto-retrain`). Every `interval_s` the trigger asks the
policy (`fleet_server.drift.policy.drift_policy` by default) for `open_retraining_round` actions;
when the runner is idle and enough of that action's devices are online, it starts a run restricted
to exactly those devices, with the action's anomalous devices excluded. One run at a time; the
same cohort is not retrained again until its device set changes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace

from flwr.app import ArrayRecord
from sqlalchemy import Engine
from sqlmodel import Session

from fleet_server.drift.policy import OPEN_RETRAINING_ROUND, CohortAction, DriftPolicy, drift_policy
from fleet_server.federated.grid import FleetGrid
from fleet_server.federated.runner import FederatedRunner, RunSpec

logger = logging.getLogger(__name__)


class DriftRetrainTrigger:
    """Polls the drift policy and starts cohort runs; `check_once()` is the testable step."""

    def __init__(
        self,
        *,
        engine: Engine,
        grid: FleetGrid,
        runner: FederatedRunner,
        spec: RunSpec,
        initial: Callable[[], ArrayRecord],
        policy: DriftPolicy = drift_policy,
        interval_s: float = 30.0,
    ) -> None:
        self._engine, self._grid, self._runner = engine, grid, runner
        self._spec, self._initial, self._policy = spec, initial, policy
        self._interval_s = interval_s
        self._done: set[frozenset[str]] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="fl-drift-trigger", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.check_once()
            except Exception:
                logger.exception("drift trigger check failed")

    def check_once(self) -> str | None:
        """Start at most one run for a drifted cohort; returns its run id."""
        if self._runner.busy():
            return None
        with Session(self._engine) as s:
            actions = [a for a in self._policy(s) if a.action == OPEN_RETRAINING_ROUND]
        for action in actions:
            run_id = self._maybe_start(action)
            if run_id is not None:
                return run_id
        return None

    def _maybe_start(self, action: CohortAction) -> str | None:
        members = frozenset(action.include_devices) - set(action.exclude_devices)
        online = set(self._grid.online_devices()) & members
        if members in self._done or len(online) < self._spec.strategy.min_nodes:
            return None
        self._grid.eligible = lambda devices: devices & members
        spec = replace(
            self._spec,
            cohort={"drift": str(action.cohort), "devices": sorted(members), "reason": action.reason},
        )
        run_id = self._runner.start(spec, self._initial())
        self._done.add(members)
        logger.info("drift-triggered run run_id=%s cohort=%s devices=%d", run_id, action.cohort, len(members))
        return run_id
