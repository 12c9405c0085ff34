"""Drift-triggered retraining: when the drift policy hook says a cohort shifted, open a run for it.

Opt-in by the operator (`POST /federated/auto-retrain`). Every `interval_s` the trigger asks the
policy (`fleet_server.drift.policy.drift_policy` by default) for `open_retraining_round` actions;
when the runner is idle and enough of that action's devices are online, it starts a run restricted
to exactly those devices, with the action's anomalous devices excluded. One run at a time; the
same cohort is not retrained again until its device set changes.

The interval is bounded (limits.py: 1 s .. 1 day, finite), so the loop can neither spin nor wait
on an impossible timeout. A failing check (database down, a bad registry model, a start refused)
is logged with the cohort and counted, and the loop keeps going; `status()` reports it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from flwr.app import ArrayRecord
from sqlalchemy import Engine
from sqlmodel import Session

from fleet_server.drift.policy import OPEN_RETRAINING_ROUND, CohortAction, DriftPolicy, drift_policy
from fleet_server.federated.grid import FleetGrid
from fleet_server.federated.lifecycle import failure_reason
from fleet_server.federated.limits import check_interval
from fleet_server.federated.runner import Eligible, RunSpec

logger = logging.getLogger(__name__)


class Launcher(Protocol):
    """Starts runs: the local `FederatedRunner`, or the fleet-wide `RunScheduler` (replicas)."""

    def validate(self, spec: RunSpec) -> None: ...

    def busy(self) -> bool: ...

    def start(
        self, spec: RunSpec, initial: Callable[[], ArrayRecord], *, eligible: Eligible | None = None
    ) -> str: ...


@dataclass(frozen=True)
class Members:
    """The eligibility filter of a drift run: exactly these devices (persisted as their ids)."""

    devices: frozenset[str]

    def __call__(self, online: set[str]) -> set[str]:
        return online & self.devices


class DriftRetrainTrigger:
    """Polls the drift policy and starts cohort runs; `check_once()` is the testable step."""

    def __init__(
        self,
        *,
        engine: Engine,
        grid: FleetGrid,
        runner: Launcher,
        spec: RunSpec,
        initial: Callable[[], ArrayRecord],
        policy: DriftPolicy = drift_policy,
        interval_s: float = 30.0,
    ) -> None:
        """Raises: InvalidRequestError for an interval out of bounds, and for a spec the runner refuses."""
        check_interval(interval_s)
        runner.validate(spec)
        self._engine, self._grid, self._runner = engine, grid, runner
        self._spec, self._initial, self._policy = spec, initial, policy
        self._interval_s = interval_s
        self._done: set[frozenset[str]] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cohort = ""  # the action being handled, for the error log
        self.checks = self.errors = self.runs_started = 0
        self.last_error = self.last_run_id = ""
        self.last_check_at: float | None = None  # unix seconds

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="fl-drift-trigger", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def status(self) -> dict[str, Any]:
        """What the trigger is doing: alive, how often, checks and errors so far, the last run it opened."""
        return {
            "enabled": True,
            "alive": self._thread is not None and self._thread.is_alive(),
            "interval_s": self._interval_s,
            "checks": self.checks,
            "errors": self.errors,
            "last_error": self.last_error,
            "last_check_at": self.last_check_at,
            "runs_started": self.runs_started,
            "last_run_id": self.last_run_id,
        }

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.check_safely()

    def check_safely(self) -> str | None:
        """`check_once` that logs and counts its errors instead of raising (the loop's step)."""
        try:
            return self.check_once()
        except Exception as err:
            self.errors += 1
            self.last_error = failure_reason(err)
            logger.exception(
                "drift trigger check failed cohort=%s errors=%d; next check in %gs",
                self._cohort or "-",
                self.errors,
                self._interval_s,
            )
            return None

    def check_once(self) -> str | None:
        """Start at most one run for a drifted cohort; returns its run id."""
        self.checks += 1
        self.last_check_at = time.time()
        self._cohort = ""
        if self._runner.busy():
            return None
        with Session(self._engine) as s:
            actions = [a for a in self._policy(s) if a.action == OPEN_RETRAINING_ROUND]
        for action in actions:
            self._cohort = str(action.cohort)
            run_id = self._maybe_start(action)
            if run_id is not None:
                self.runs_started += 1
                self.last_run_id = run_id
                return run_id
        return None

    def _maybe_start(self, action: CohortAction) -> str | None:
        members = frozenset(action.include_devices) - set(action.exclude_devices)
        online = set(self._grid.online_devices()) & members
        if members in self._done or len(online) < self._spec.strategy.min_nodes:
            return None
        spec = replace(
            self._spec,
            cohort={"drift": str(action.cohort), "devices": sorted(members), "reason": action.reason},
        )
        run_id = self._runner.start(spec, self._initial, eligible=Members(members))
        self._done.add(members)
        logger.info("drift-triggered run run_id=%s cohort=%s devices=%d", run_id, action.cohort, len(members))
        return run_id
