"""`step(record, event) -> (record, effects)`: the pure update machine over `states.TRANSITIONS`.

Sans-IO: no files, clock or logging setup. The client persists the returned record *before*
running the effects (`Report` to the server, `RunState` for the new state's work), so a crash at
any instant re-enters a state whose work is idempotent. Raises only when misused (an event the
table does not allow in that state), like tuf's TrustedMetadataSet.

Bounded retries: a transient failure of a state's work is the RETRY event. It keeps the state,
counts the attempt in the persisted record (so a restart does not reset the bound), reports it
(the operator sees "attempt 2/5 failed: ...") and asks for the work again after backoff attempt
``n`` (`RunState.attempt`; the client turns it into a jittered delay). The attempt that reaches
`max_attempts` becomes the state's `GIVE_UP` event instead, so the update ends (`failed`, or the
revert path after the switch) with the last error as its reason and newer deployments can start.

`refuse` records that the device refused the repository's metadata for the deployment the fleet
server says it should run: the REFUSED state, reported with the reason against that deployment.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from agent.ota.states import GIVE_UP, SWITCHED_STATES, TERMINAL, TRANSITIONS, UpdateEvent, UpdateState

FORMAT = 1
MAX_RESUMES = 3  # restarts inside one state before LOOP_DETECTED
MAX_RESTARTS = 6  # restarts during one deployment before LOOP_DETECTED
MAX_ATTEMPTS = 5  # transient failures of one state's work before its GIVE_UP event


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
    attempts: int = 0  # transient failures of the current state's work (RETRY events)
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
    """Do the work of `state` and feed the outcome back as an event; `attempt` > 0: the work failed
    that many times already, wait backoff delay number `attempt` first."""

    state: UpdateState
    attempt: int = 0


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


def _retry(
    record: UpdateRecord, attempts: int, detail: str, max_attempts: int
) -> tuple[UpdateRecord, list[Effect]]:
    """Stay in the state, count the attempt, report it and ask for the work again after backoff."""
    new = replace(record, transition=record.transition + 1, attempts=attempts, detail=detail)
    report = Report(
        deployment_id=record.deployment_id,
        release_seq=int(record.plan.get("release_seq", 0)),
        transition=new.transition,
        from_state=record.state,
        to_state=record.state,
        event=UpdateEvent.RETRY,
        detail=f"attempt {attempts}/{max_attempts} failed: {detail}",
    )
    return new, [report, RunState(record.state, attempt=attempts)]


def step(
    record: UpdateRecord, event: UpdateEvent, *, detail: str = "", max_attempts: int = MAX_ATTEMPTS
) -> tuple[UpdateRecord, list[Effect]]:
    """Apply `event`; returns the record to persist and the effects to run after persisting."""
    looping = record.save_count >= MAX_RESUMES or record.restarts > MAX_RESTARTS
    if event is UpdateEvent.RESUMED and record.state not in TERMINAL and looping:
        event = UpdateEvent.LOOP_DETECTED
        detail = f"crash loop: {record.restarts} restarts, {record.save_count} in {record.state}"
    if event is UpdateEvent.RETRY:
        if record.state in TERMINAL:
            raise TransitionError(f"event {event} not allowed in state {record.state}")
        attempts = record.attempts + 1
        give_up = GIVE_UP.get(record.state)
        if give_up is None or attempts < max_attempts:
            return _retry(record, attempts, detail, max_attempts)
        event, detail = give_up, f"gave up after {attempts} attempts: {detail}"
    if event is UpdateEvent.METADATA_REFUSED:
        raise TransitionError("use refuse() for a metadata refusal")
    new_state = _next(record.state, event)
    same = new_state is record.state
    new = replace(
        record,
        state=new_state,
        transition=record.transition + 1,
        save_count=record.save_count + 1 if same else 1,
        attempts=record.attempts if same else 0,
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
        record,
        deployment_id=deployment_id,
        plan=plan,
        previous_sha256="",
        save_count=0,
        restarts=0,
        attempts=0,
    )
    return step(fresh, UpdateEvent.ASSIGNED)


def refuse(
    record: UpdateRecord, *, deployment_id: str, release_seq: int, detail: str
) -> tuple[UpdateRecord, list[Effect]]:
    """The device refused the metadata of `deployment_id` (from a terminal state): REFUSED, reported.

    Raises:
        TransitionError: a deployment is still in flight.
    """
    if record.state not in TERMINAL:
        raise TransitionError(f"deployment {record.deployment_id} still in {record.state}")
    new_state = _next(record.state, UpdateEvent.METADATA_REFUSED)
    new = replace(
        record,
        state=new_state,
        deployment_id=deployment_id,
        plan={"release_seq": release_seq},
        previous_sha256="",
        transition=record.transition + 1,
        save_count=1,
        restarts=0,
        attempts=0,
        detail=detail,
    )
    report = Report(
        deployment_id=deployment_id,
        release_seq=release_seq,
        transition=new.transition,
        from_state=record.state,
        to_state=new_state,
        event=UpdateEvent.METADATA_REFUSED,
        detail=detail,
    )
    return new, [report]


def in_flight(record: UpdateRecord) -> bool:
    return record.state not in TERMINAL
