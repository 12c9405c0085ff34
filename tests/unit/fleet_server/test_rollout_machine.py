"""The rollout transition table and `step`: every (state, event) pair is either a row of the table
or refused with a specific reason; whole rollouts as chains of states and effects."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from fleet_server.errors import ConflictError, InvalidRequestError
from fleet_server.rollouts.machine import (
    AssignBatch,
    Audit,
    CancelPending,
    Ctx,
    EvaluateGates,
    Pause,
    RolloutRecord,
    RolloutRefused,
    StartRollback,
    step,
)
from fleet_server.rollouts.states import (
    ACTIVE,
    TERMINAL,
    TRANSITIONS,
    BreachPolicy,
    RolloutEvent,
    RolloutState,
)

S, E = RolloutState, RolloutEvent


def _record(state: RolloutState, **kw: object) -> RolloutRecord:
    base = {"batch": 1 if state not in {S.DRAFT} else -1, "batches": 4}
    if state is S.PAUSED:
        base["paused_from"] = S.RUNNING
    return RolloutRecord(rollout_id="r1", state=state, **{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize(("state", "event"), list(itertools.product(RolloutState, RolloutEvent)))
def test_every_pair_is_a_row_or_refused_with_a_reason(state: RolloutState, event: RolloutEvent) -> None:
    record = _record(state)
    if (state, event) in TRANSITIONS:
        new, effects = step(record, event, Ctx(actor="alice", detail="why"))
        assert new.transition == record.transition + 1
        assert isinstance(effects[-1], Audit)
        assert effects[-1].action == f"rollout.{event.value}"
        assert effects[-1].details["from"] == state.value
        assert effects[-1].details["to"] == new.state.value
        return
    with pytest.raises(RolloutRefused) as exc:
        step(record, event, Ctx(actor="alice"))
    err = exc.value
    assert isinstance(err, ConflictError)  # -> HTTP 409 with the reason
    assert err.reason.startswith(f"{event.value} refused in state {state.value}: ")
    assert not err.reason.endswith("not allowed"), err.reason  # every refusal has a specific reason


def test_terminal_states_only_allow_a_later_rollback() -> None:
    for state in TERMINAL:
        allowed = {e for (s, e) in TRANSITIONS if s is state}
        assert allowed <= {E.ROLLBACK}
    assert (S.ROLLED_BACK, E.ROLLBACK) not in TRANSITIONS
    assert S.DRAFT not in ACTIVE and not (ACTIVE & TERMINAL)


def _run(record: RolloutRecord, *events: RolloutEvent) -> tuple[RolloutRecord, list[str], list[object]]:
    states, effects = [], []
    for event in events:
        record, out = step(record, event)
        states.append(record.state.value)
        effects.extend(e for e in out if not isinstance(e, Audit))
    return record, states, effects


def test_a_good_rollout_walks_every_batch_and_completes() -> None:
    rec = RolloutRecord("r1", batches=3)
    rec, states, effects = _run(
        rec,
        E.START,
        E.BATCH_SETTLED,
        E.GATES_PENDING,
        E.GATES_PASSED,
        E.BATCH_SETTLED,
        E.GATES_PASSED,
        E.BATCH_SETTLED,
        E.GATES_PASSED,
    )
    assert states == [
        "running",
        "waiting",
        "waiting",
        "running",
        "waiting",
        "running",
        "waiting",
        "completed",
    ]
    assert effects == [
        AssignBatch(0),
        EvaluateGates(0),
        EvaluateGates(0),
        AssignBatch(1),
        EvaluateGates(1),
        AssignBatch(2),
        EvaluateGates(2),
    ]
    assert (rec.batch, rec.transition) == (2, 8)


def test_a_single_batch_rollout_completes_after_its_gates() -> None:
    _, states, _ = _run(RolloutRecord("r1", batches=1), E.START, E.BATCH_SETTLED, E.GATES_PASSED)
    assert states == ["running", "waiting", "completed"]


def test_breach_with_pause_policy_waits_for_an_operator_and_resume_overrides() -> None:
    rec, _, _ = _run(RolloutRecord("r1", batches=3), E.START, E.BATCH_SETTLED)
    rec, effects = step(rec, E.GATES_FAILED, Ctx(detail="confidence G=41.2 p=1e-6"))
    assert rec.state is S.PAUSED and rec.paused_by_breach and rec.paused_from is S.WAITING
    assert rec.reason == "batch 0 breached its gates: confidence G=41.2 p=1e-6"
    assert effects[0] == Pause(rec.reason)
    resumed, effects = step(rec, E.RESUME, Ctx(actor="alice"))
    assert (resumed.state, resumed.batch, resumed.reason) == (S.RUNNING, 1, "")
    assert effects[0] == AssignBatch(1)
    assert effects[-1].details["actor"] == "alice"  # type: ignore[union-attr]
    rolled, effects = step(rec, E.ROLLBACK, Ctx(actor="bob"))
    assert rolled.state is S.ROLLING_BACK
    assert [type(e) for e in effects] == [CancelPending, StartRollback, Audit]


def test_breach_with_rollback_policy_rolls_back_at_once() -> None:
    rec = RolloutRecord("r1", batches=4, on_breach=BreachPolicy.ROLLBACK)
    rec, _, _ = _run(rec, E.START)
    rec, effects = step(rec, E.GATES_FAILED, Ctx(detail="install failures 3/20"))  # mid-batch breach
    assert rec.state is S.ROLLING_BACK
    assert effects[:2] == [CancelPending(rec.reason), StartRollback(rec.reason)]
    rec, _ = step(rec, E.ROLLBACK_DONE)
    assert rec.state is S.ROLLED_BACK
    assert rec.reason == "batch 0 breached its gates: install failures 3/20"


def test_operator_pause_resumes_where_it_was() -> None:
    rec, _, _ = _run(RolloutRecord("r1", batches=3), E.START)
    paused, effects = step(rec, E.PAUSE, Ctx(actor="alice", detail="maintenance"))
    assert (paused.state, paused.paused_from, paused.reason) == (
        S.PAUSED,
        S.RUNNING,
        "paused by alice: maintenance",
    )
    back, effects = step(paused, E.RESUME)
    assert (back.state, back.batch) == (S.RUNNING, 0)
    assert effects[0] == AssignBatch(0)  # idempotent re-assignment of the same batch
    rec, _, _ = _run(rec, E.BATCH_SETTLED)
    paused, _ = step(rec, E.PAUSE)
    back, effects = step(paused, E.RESUME)
    assert back.state is S.WAITING and effects[0] == EvaluateGates(0)


def test_breach_after_the_last_batch_resumed_completes() -> None:
    rec = RolloutRecord(
        "r1", batches=2, state=S.PAUSED, batch=1, paused_from=S.WAITING, paused_by_breach=True
    )
    done, _ = step(rec, E.RESUME)
    assert done.state is S.COMPLETED


def test_abort_and_later_rollback() -> None:
    rec, _, _ = _run(RolloutRecord("r1", batches=3), E.START)
    aborted, effects = step(rec, E.ABORT, Ctx(actor="alice"))
    assert aborted.state is S.ABORTED and effects[0] == CancelPending("aborted by alice")
    rolled, effects = step(aborted, E.ROLLBACK)
    assert rolled.state is S.ROLLING_BACK and StartRollback("rollback by system") in effects
    draft_abort, effects = step(RolloutRecord("r1", batches=3), E.ABORT)
    assert draft_abort.state is S.ABORTED


def test_refusals_name_the_reason() -> None:
    with pytest.raises(RolloutRefused, match="already paused"):
        step(_record(S.PAUSED), E.PAUSE)
    with pytest.raises(RolloutRefused, match="no device got the release"):
        step(_record(S.DRAFT), E.ROLLBACK)
    with pytest.raises(RolloutRefused, match="only a draft rollout can be started"):
        step(_record(S.RUNNING), E.START)
    with pytest.raises(RolloutRefused, match="has already ended"):
        step(_record(S.COMPLETED), E.PAUSE)


def test_refused_event_changes_nothing() -> None:
    rec = _record(S.WAITING)
    with pytest.raises(RolloutRefused):
        step(rec, E.ROLLBACK_DONE)
    assert rec == _record(S.WAITING)
    assert replace(rec) == rec


def test_a_rollout_needs_a_batch() -> None:
    with pytest.raises(InvalidRequestError, match="at least one batch"):
        RolloutRecord("r1", batches=0)
