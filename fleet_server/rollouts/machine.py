"""`step(record, event, ctx) -> (record, effects)`: the pure rollout machine over `states.TRANSITIONS`.

Sans-IO: no database, clock or logging. The engine persists the returned record *before* running
the effects (assign a batch, evaluate gates, pause, start a rollback, cancel pending assignments,
audit), so a replica killed between the two re-runs effects that are idempotent by (rollout,
transition). An event the table does not allow raises `RolloutRefused` with the reason, which the
REST layer shows as a 409: a viewer's or a late operator's click never half-changes a rollout.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from fleet_server.errors import ConflictError, InvalidRequestError
from fleet_server.rollouts.states import (
    BREACH,
    ON_BREACH,
    TRANSITIONS,
    BreachPolicy,
    RolloutEvent,
    RolloutState,
    refusal,
)

S, E = RolloutState, RolloutEvent


class RolloutRefused(ConflictError):
    """The event is not allowed in the rollout's current state; `reason` says why."""

    def __init__(self, state: RolloutState, event: RolloutEvent) -> None:
        self.state, self.event = state, event
        self.reason = refusal(state, event)
        super().__init__(self.reason)


@dataclass(frozen=True)
class RolloutRecord:
    """Everything persisted about a rollout's progress."""

    rollout_id: str
    batches: int  # planned number of batches (>= 1)
    state: RolloutState = S.DRAFT
    batch: int = -1  # index of the batch assigned last (-1: none yet)
    on_breach: BreachPolicy = BreachPolicy.PAUSE
    paused_from: RolloutState | None = None
    paused_by_breach: bool = False
    reason: str = ""  # why the rollout is paused / ended / rolling back
    transition: int = 0  # strictly increasing; effects are idempotent per (rollout_id, transition)

    def __post_init__(self) -> None:
        if self.batches < 1:
            raise InvalidRequestError(f"a rollout needs at least one batch, got {self.batches}")


@dataclass(frozen=True)
class Ctx:
    """Who sends the event and why (both land in the audit entry), e.g. the gate verdict text."""

    actor: str = "system"
    detail: str = ""


@dataclass(frozen=True)
class AssignBatch:
    batch: int


@dataclass(frozen=True)
class EvaluateGates:
    batch: int


@dataclass(frozen=True)
class Pause:
    reason: str


@dataclass(frozen=True)
class CancelPending:
    """Stop assignments of this rollout that devices have not started installing."""

    reason: str


@dataclass(frozen=True)
class StartRollback:
    """Publish a release pointing at the previous bytes for every device that got this one."""

    reason: str


@dataclass(frozen=True)
class Audit:
    action: str
    details: dict[str, Any]


Effect = AssignBatch | EvaluateGates | Pause | CancelPending | StartRollback | Audit


def _target(record: RolloutRecord, event: RolloutEvent) -> RolloutState:
    nxt = TRANSITIONS.get((record.state, event))
    if nxt is None:
        raise RolloutRefused(record.state, event)
    if (record.state, event) in {(S.RUNNING, E.GATES_FAILED), (S.WAITING, E.GATES_FAILED)}:
        assert nxt is BREACH
        return ON_BREACH[record.on_breach]
    return nxt


def _advance(record: RolloutRecord) -> tuple[RolloutState, int, list[Effect]]:
    """After a batch passed (or an operator overrode its breach): next batch, or completed."""
    if record.batch + 1 >= record.batches:
        return S.COMPLETED, record.batch, []
    return S.RUNNING, record.batch + 1, [AssignBatch(record.batch + 1)]


def step(
    record: RolloutRecord, event: RolloutEvent, ctx: Ctx | None = None
) -> tuple[RolloutRecord, list[Effect]]:
    """Apply `event`; raises RolloutRefused (nothing changes) when the table does not allow it."""
    ctx = ctx or Ctx()
    nxt = _target(record, event)
    batch, effects = record.batch, list[Effect]()
    paused_from, by_breach, reason = None, False, ""
    if event is E.START:
        batch, effects = 0, [AssignBatch(0)]
    elif event is E.BATCH_SETTLED or event is E.GATES_PENDING:
        effects = [EvaluateGates(batch)]
    elif event is E.GATES_PASSED:
        nxt, batch, effects = _advance(record)
    elif event is E.GATES_FAILED:
        reason = f"batch {batch} breached its gates: {ctx.detail}".rstrip(": ")
        if nxt is S.PAUSED:
            paused_from, by_breach, effects = record.state, True, [Pause(reason)]
        else:
            effects = [CancelPending(reason), StartRollback(reason)]
    elif event is E.PAUSE:
        reason = f"paused by {ctx.actor}" + (f": {ctx.detail}" if ctx.detail else "")
        paused_from, effects = record.state, [Pause(reason)]
    elif event is E.RESUME:
        if record.paused_by_breach:
            nxt, batch, effects = _advance(record)
        else:
            nxt = record.paused_from or S.RUNNING
            effects = [EvaluateGates(batch)] if nxt is S.WAITING else [AssignBatch(batch)]
    elif event is E.ABORT:
        reason = f"aborted by {ctx.actor}" + (f": {ctx.detail}" if ctx.detail else "")
        effects = [CancelPending(reason)]
    elif event is E.ROLLBACK:
        reason = f"rollback by {ctx.actor}" + (f": {ctx.detail}" if ctx.detail else "")
        effects = [CancelPending(reason), StartRollback(reason)]
    elif event is E.ROLLBACK_DONE:
        reason = record.reason
    new = replace(record, state=nxt, batch=batch, paused_from=paused_from, paused_by_breach=by_breach,
                  reason=reason or (record.reason if nxt is S.ROLLED_BACK else ""),
                  transition=record.transition + 1)  # fmt: skip
    audit = Audit(
        f"rollout.{event.value}",
        {"from": record.state.value, "to": nxt.value, "batch": batch, "transition": new.transition,
         "actor": ctx.actor, "detail": ctx.detail, "reason": new.reason},
    )  # fmt: skip
    return new, [*effects, audit]
