"""The reconcile decision: desired state (server) vs observed state (device) -> actions.

Pure: no I/O, no clock. The daemon executes the actions and feeds the result back as the new
observed state. Rules (kubelet's shape):
- nothing happens until desired state has been received once (no destructive housekeeping
  from an unready source);
- a desired generation at or below the applied one is ignored (stale or replayed);
- model actions are produced here and executed by the OTA machinery of a later issue; until
  then the daemon reports them as deferred, it never claims to have applied them.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.state import AgentSettings, DesiredState, ModelAssignment, ObservedState


@dataclass(frozen=True)
class ApplySettings:
    settings: AgentSettings


@dataclass(frozen=True)
class ApplyLabels:
    labels: dict[str, str]


@dataclass(frozen=True)
class InstallModel:
    assignment: ModelAssignment


@dataclass(frozen=True)
class RemoveModel:
    slot: str


@dataclass(frozen=True)
class MarkApplied:
    generation: int


Action = ApplySettings | ApplyLabels | InstallModel | RemoveModel | MarkApplied


def reconcile(desired: DesiredState | None, observed: ObservedState) -> list[Action]:
    if desired is None or desired.generation <= observed.applied_generation:
        return []
    actions: list[Action] = []
    if desired.settings != observed.settings:
        actions.append(ApplySettings(desired.settings))
    if desired.labels != observed.labels:
        actions.append(ApplyLabels(dict(desired.labels)))
    have = {s.slot: s for s in observed.slots}
    want = {m.slot: m for m in desired.models}
    for slot, model in sorted(want.items()):
        current = have.get(slot)
        if current is None or (current.model_name, current.model_version) != (
            model.model_name,
            model.model_version,
        ):
            actions.append(InstallModel(model))
    actions.extend(RemoveModel(slot) for slot in sorted(set(have) - set(want)))
    actions.append(MarkApplied(desired.generation))
    return actions
