"""Applying DesiredState on the device: the `agent.reconcile` decision carried out against local state.

Owns `Reconciler` (settings and labels are applied to the persisted observed state at once, the
generation is marked applied only when nothing was deferred) and the `ModelExecutor` port that model
installs and removals are handed to (the OTA client implements it). Does not decide what to do
(`agent.reconcile`, pure), hold the session with the server (`agent.sync`) or install models
(`agent.ota`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Protocol

from agent.reconcile import (
    ApplyLabels,
    ApplySettings,
    InstallModel,
    MarkApplied,
    RemoveModel,
    reconcile,
)
from agent.state import DesiredState, Health, ObservedState, SlotState
from agent.statefile import StateFile

logger = logging.getLogger(__name__)


class ModelExecutor(Protocol):
    """Carries out model actions (the OTA client implements it; later issues plug it in).

    `submit` must not block: it queues work and returns. `slots` is what the device runs now.
    """

    def slots(self) -> tuple[SlotState, ...]: ...
    def submit(self, actions: list[InstallModel | RemoveModel], desired: DesiredState) -> None: ...


class Reconciler:
    """Runs reconcile actions against local state; model actions go to a ModelExecutor, or are
    reported as deferred (health DEGRADED, generation not marked applied) when there is none."""

    def __init__(self, statefile: StateFile, executor: ModelExecutor | None = None) -> None:
        self._statefile = statefile
        self._executor = executor
        self._base = statefile.load()
        self.desired: DesiredState | None = None
        self.deferred: list[str] = []

    @property
    def observed(self) -> ObservedState:
        slots = self._executor.slots() if self._executor is not None else ()
        return replace(self._base, slots=slots)

    def apply(self, desired: DesiredState) -> None:
        if self.desired is not None and desired.generation < self.desired.generation:
            return
        self.desired = desired
        observed = self.observed
        deferred: list[str] = []
        model_actions: list[InstallModel | RemoveModel] = []
        for action in reconcile(desired, observed):
            if isinstance(action, ApplySettings):
                observed = replace(observed, settings=action.settings)
            elif isinstance(action, ApplyLabels):
                observed = replace(observed, labels=action.labels)
            elif isinstance(action, InstallModel | RemoveModel):
                model_actions.append(action)
                if self._executor is None:
                    deferred.append(f"{type(action).__name__}({action})")
            elif isinstance(action, MarkApplied) and not deferred:
                observed = replace(observed, applied_generation=action.generation)
        if model_actions and self._executor is not None:
            self._executor.submit(model_actions, desired)
        if deferred:
            observed = replace(
                observed, health=Health.DEGRADED, health_detail="model actions deferred: no model executor"
            )
            logger.warning(
                "reconcile deferred actions generation=%d actions=%s", desired.generation, deferred
            )
        observed = replace(observed, slots=())
        if observed != self._base:
            self._statefile.save(observed)
            logger.info(
                "reconciled generation=%d applied_generation=%d",
                desired.generation,
                observed.applied_generation,
            )
        self._base, self.deferred = observed, deferred
