"""States, events and the transition table of a rollout (pure data, no I/O).

How to read the table: a row ``(STATE, EVENT): NEXT`` says that in STATE, EVENT moves the rollout
to NEXT. A rollout is created in DRAFT; START assigns batch 0 (RUNNING); when the batch's installs
have settled (each device committed, failed, or silent past the timeout) BATCH_SETTLED moves it to
WAITING, where the batch's gates are evaluated; GATES_PASSED assigns the next batch (RUNNING) or,
after the last one, ends in COMPLETED; GATES_PENDING (not enough data yet) stays in WAITING. What
does not fit a flat table lives in `machine.py` and is named here:

- GATES_FAILED is a breach: the rollout's breach policy picks PAUSED (an operator decides) or
  ROLLING_BACK (`ON_BREACH`).
- GATES_PASSED after the last batch ends in COMPLETED instead of RUNNING.
- RESUME returns to the state the rollout was paused in; after a breach pause it is an operator
  override and the next batch is assigned (or the rollout completes after the last one).

Terminal states (COMPLETED, ABORTED, ROLLED_BACK) refuse everything except ROLLBACK from
COMPLETED or ABORTED (an operator may still send the fleet back to the previous model). Every
other (state, event) pair is refused with a reason (`REFUSALS`, else a generic one). Values are
strings because they are persisted.
"""

from __future__ import annotations

from enum import StrEnum


class RolloutState(StrEnum):
    DRAFT = "draft"
    RUNNING = "running"  # batch i assigned, installs in flight
    WAITING = "waiting"  # batch i settled, gates being evaluated
    PAUSED = "paused"
    ROLLING_BACK = "rolling_back"  # a rollback release assigned, waiting for devices to commit it
    COMPLETED = "completed"
    ABORTED = "aborted"
    ROLLED_BACK = "rolled_back"


class RolloutEvent(StrEnum):
    START = "start"
    BATCH_SETTLED = "batch_settled"
    GATES_PASSED = "gates_passed"
    GATES_PENDING = "gates_pending"
    GATES_FAILED = "gates_failed"
    PAUSE = "pause"
    RESUME = "resume"
    ABORT = "abort"
    ROLLBACK = "rollback"
    ROLLBACK_DONE = "rollback_done"


class BreachPolicy(StrEnum):
    PAUSE = "pause"  # stop assigning; an operator resumes, aborts or rolls back
    ROLLBACK = "rollback"  # abort and roll every device that got the release back at once


S, E = RolloutState, RolloutEvent

TERMINAL = frozenset({S.COMPLETED, S.ABORTED, S.ROLLED_BACK})
ACTIVE = frozenset({S.RUNNING, S.WAITING, S.PAUSED, S.ROLLING_BACK})  # holds its devices
OPERATOR_EVENTS = frozenset({E.START, E.PAUSE, E.RESUME, E.ABORT, E.ROLLBACK})

BREACH = S.PAUSED  # placeholder target of GATES_FAILED in the table; machine.py applies ON_BREACH
ON_BREACH: dict[BreachPolicy, RolloutState] = {
    BreachPolicy.PAUSE: S.PAUSED,
    BreachPolicy.ROLLBACK: S.ROLLING_BACK,
}

TRANSITIONS: dict[tuple[RolloutState, RolloutEvent], RolloutState] = {
    (S.DRAFT, E.START): S.RUNNING,
    (S.DRAFT, E.ABORT): S.ABORTED,
    (S.RUNNING, E.BATCH_SETTLED): S.WAITING,
    (S.RUNNING, E.GATES_FAILED): BREACH,  # e.g. the install-failure gate breached mid-batch
    (S.RUNNING, E.PAUSE): S.PAUSED,
    (S.RUNNING, E.ABORT): S.ABORTED,
    (S.RUNNING, E.ROLLBACK): S.ROLLING_BACK,
    (S.WAITING, E.GATES_PASSED): S.RUNNING,  # or COMPLETED after the last batch
    (S.WAITING, E.GATES_PENDING): S.WAITING,
    (S.WAITING, E.GATES_FAILED): BREACH,
    (S.WAITING, E.PAUSE): S.PAUSED,
    (S.WAITING, E.ABORT): S.ABORTED,
    (S.WAITING, E.ROLLBACK): S.ROLLING_BACK,
    (S.PAUSED, E.RESUME): S.RUNNING,  # or the state it was paused in; see machine.py
    (S.PAUSED, E.ABORT): S.ABORTED,
    (S.PAUSED, E.ROLLBACK): S.ROLLING_BACK,
    (S.ROLLING_BACK, E.ROLLBACK_DONE): S.ROLLED_BACK,
    (S.COMPLETED, E.ROLLBACK): S.ROLLING_BACK,
    (S.ABORTED, E.ROLLBACK): S.ROLLING_BACK,
}

# Why an event is refused where the table has no row (the operator sees this text in a 409).
REFUSALS: dict[tuple[RolloutState | None, RolloutEvent], str] = {
    (S.PAUSED, E.PAUSE): "the rollout is already paused",
    (S.ROLLING_BACK, E.ROLLBACK): "the rollout is already rolling back",
    (S.ROLLED_BACK, E.ROLLBACK): "the rollout was already rolled back",
    (S.DRAFT, E.PAUSE): "the rollout has not started; abort it or start it",
    (S.DRAFT, E.RESUME): "the rollout has not started; start it",
    (S.DRAFT, E.ROLLBACK): "the rollout has not started, so no device got the release; abort it",
    (S.ROLLING_BACK, E.ABORT): "the rollout is rolling back; that finishes on its own",
    (S.ROLLING_BACK, E.PAUSE): "a rollback cannot be paused; devices are returning to the previous model",
    (None, E.START): "only a draft rollout can be started",
    (None, E.RESUME): "only a paused rollout can be resumed",
    (None, E.ABORT): "the rollout has already ended",
    (None, E.PAUSE): "the rollout has already ended",
    (None, E.BATCH_SETTLED): "no batch is installing",
    (None, E.GATES_PASSED): "no batch is waiting for its gates",
    (None, E.GATES_PENDING): "no batch is waiting for its gates",
    (None, E.GATES_FAILED): "no batch is installing or waiting for its gates",
    (None, E.ROLLBACK_DONE): "no rollback is in progress",
    (None, E.ROLLBACK): "the rollout cannot be rolled back in this state",
}


def refusal(state: RolloutState, event: RolloutEvent) -> str:
    """Why `event` is not allowed in `state` (only meaningful when the table has no row)."""
    why = REFUSALS.get((state, event)) or REFUSALS.get((None, event)) or "not allowed"
    return f"{event.value} refused in state {state.value}: {why}"
