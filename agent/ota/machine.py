"""`step(record, event) -> (record, effects)`: the pure update machine over `states.TRANSITIONS`.

Sans-IO: no files, clock or logging setup. The client persists the returned record *before*
running the effects (`Report` to the server, `RunState` for the new state's work), so a crash at
any instant re-enters a state whose work is idempotent. Raises only when misused (an event the
table does not allow in that state), like tuf's TrustedMetadataSet.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from agent.ota.states import SWITCHED_STATES, TERMINAL, TRANSITIONS, UpdateEvent, UpdateState

FORMAT = 1
MAX_RESUMES = 3  # restarts inside one state before LOOP_DETECTED
MAX_RESTARTS = 6  # restarts during one deployment before LOOP_DETECTED


@dataclass(frozen=True)
class UpdateRecord:
    """Everything persisted about the deployment in flight (or the last one)."""

    state: UpdateState = UpdateState.IDLE
    deployment_id: str = ""
    plan: dict[str, Any] = field(default_factory=dict)
    transition: int = 0  # strictly increasing per record; the server keeps the highest
    save_count: int = 0  # times the current state was entered or resumed
    previous_sha256: str = ""  # the model serving before the switch
    detail: str = ""
    restarts: int = 0  # agent restarts during this deployment (crash-loop detection)
    unreported: dict[str, Any] = field(default_factory=dict)  # last transition not yet in the outbox
    format: int = FORMAT


@dataclass(frozen=True)
class Report:
    deployment_id: str
    release_seq: int
    transition: int
    from_state: UpdateState
    to_state: UpdateState
    event: UpdateEvent
    detail: str


@dataclass(frozen=True)
class RunState:
    """Do the work of `state` and feed the outcome back as an event."""

    state: UpdateState


Effect = Report | RunState


class TransitionError(RuntimeError):
    """An event the table does not allow in the current state (a bug in the caller)."""


def _next(state: UpdateState, event: UpdateEvent) -> UpdateState:
    if event is UpdateEvent.LOOP_DETECTED and state not in TERMINAL:
        return UpdateState.REVERTING if state in SWITCHED_STATES else UpdateState.FAILED
    if event is UpdateEvent.RESUMED and state not in TERMINAL:
        return TRANSITIONS.get((state, event), state)
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise TransitionError(f"event {event} not allowed in state {state}") from None


def step(record: UpdateRecord, event: UpdateEvent, *, detail: str = "") -> tuple[UpdateRecord, list[Effect]]:
    """Apply `event`; returns the record to persist and the effects to run after persisting."""
    looping = record.save_count >= MAX_RESUMES or record.restarts > MAX_RESTARTS
    if event is UpdateEvent.RESUMED and record.state not in TERMINAL and looping:
        event = UpdateEvent.LOOP_DETECTED
        detail = f"crash loop: {record.restarts} restarts, {record.save_count} in {record.state}"
    new_state = _next(record.state, event)
    same = new_state is record.state
    new = replace(
        record,
        state=new_state,
        transition=record.transition + 1,
        save_count=record.save_count + 1 if same else 1,
        detail=detail,
    )
    effects: list[Effect] = []
    if not same:
        effects.append(
            Report(
                deployment_id=record.deployment_id,
                release_seq=int(record.plan.get("release_seq", 0)),
                transition=new.transition,
                from_state=record.state,
                to_state=new_state,
                event=event,
                detail=detail,
            )
        )
    if new_state not in TERMINAL:
        effects.append(RunState(new_state))
    return new, effects


def assign(
    record: UpdateRecord, *, deployment_id: str, plan: dict[str, Any]
) -> tuple[UpdateRecord, list[Effect]]:
    """Start a new deployment from a terminal state.

    Raises:
        TransitionError: a deployment is still in flight.
    """
    if record.state not in TERMINAL:
        raise TransitionError(f"deployment {record.deployment_id} still in {record.state}")
    fresh = replace(
        record, deployment_id=deployment_id, plan=plan, previous_sha256="", save_count=0, restarts=0
    )
    return step(fresh, UpdateEvent.ASSIGNED)


def in_flight(record: UpdateRecord) -> bool:
    return record.state not in TERMINAL
