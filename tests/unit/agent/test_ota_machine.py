"""The pure update machine: scenario table over the transition table, crash-loop detection,
misuse guards, and the record store."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import StorageError
from agent.ota.machine import MAX_RESTARTS, Report, RunState, TransitionError, UpdateRecord, assign, step
from agent.ota.states import TRANSITIONS, UpdateEvent, UpdateState
from agent.ota.store import RecordStore

S, E = UpdateState, UpdateEvent
HAPPY = [
    E.DOWNLOADED,
    E.VERIFIED,
    E.STAGED,
    E.GOLDEN_PASSED,
    E.SHADOW_PASSED,
    E.SWITCHED,
    E.WATCH_PASSED,
    E.COMMIT_DONE,
]


def _drive(events: list[UpdateEvent]) -> tuple[UpdateRecord, list[UpdateState]]:
    record, effects = assign(UpdateRecord(), deployment_id="dep", plan={"release_seq": 7})
    chain = [r.to_state for r in effects if isinstance(r, Report)]
    for event in events:
        record, effects = step(record, event)
        chain += [r.to_state for r in effects if isinstance(r, Report)]
    return record, chain


@pytest.mark.parametrize(
    ("name", "events", "final"),
    [
        ("happy", HAPPY, S.COMMITTED),
        ("download fails", [E.DOWNLOAD_FAILED], S.FAILED),
        ("verify fails", [E.DOWNLOADED, E.VERIFY_FAILED], S.FAILED),
        ("stage fails", [E.DOWNLOADED, E.VERIFIED, E.STAGE_FAILED], S.FAILED),
        ("golden fails", [*HAPPY[:3], E.GOLDEN_FAILED], S.FAILED),
        ("shadow fails", [*HAPPY[:4], E.SHADOW_FAILED], S.FAILED),
        ("switch fails", [*HAPPY[:5], E.SWITCH_FAILED, E.REVERTED], S.ROLLED_BACK),
        ("watch fails", [*HAPPY[:6], E.WATCH_FAILED, E.REVERTED], S.ROLLED_BACK),
        ("revert fails", [*HAPPY[:6], E.WATCH_FAILED, E.REVERT_FAILED], S.FAILED),
        ("crash in golden restages", [*HAPPY[:3], E.RESUMED, E.STAGED, E.GOLDEN_PASSED], S.SHADOWING),
        ("crash in download resumes", [E.RESUMED, E.RESUMED, E.DOWNLOADED], S.VERIFYING),
    ],
)
def test_scenarios(name: str, events: list[UpdateEvent], final: UpdateState) -> None:
    record, chain = _drive(events)
    assert record.state is final, name
    assert chain[0] is S.DOWNLOADING
    if final is S.ROLLED_BACK:
        assert S.COMMITTED not in chain


def test_transition_numbers_increase_and_reports_only_on_change() -> None:
    record, effects = assign(UpdateRecord(), deployment_id="dep", plan={"release_seq": 3})
    numbers = [record.transition]
    record, effects = step(record, E.RESUMED)
    assert not any(isinstance(e, Report) for e in effects) and effects == [RunState(S.DOWNLOADING)]
    numbers.append(record.transition)
    record, effects = step(record, E.DOWNLOAD_FAILED, detail="404")
    assert effects == [Report("dep", 3, record.transition, S.DOWNLOADING, S.FAILED, E.DOWNLOAD_FAILED, "404")]
    numbers.append(record.transition)
    assert numbers == sorted(set(numbers))


def test_three_restarts_in_one_state_is_a_loop() -> None:
    record, _ = _drive(HAPPY[:6])
    assert record.state is S.WATCHING
    record, _ = step(record, E.RESUMED)
    record, _ = step(record, E.RESUMED)
    assert record.state is S.WATCHING
    record, effects = step(record, E.RESUMED)
    assert record.state is S.REVERTING and isinstance(effects[0], Report)
    assert effects[0].event is E.LOOP_DETECTED


def test_loop_before_the_switch_fails_without_reverting() -> None:
    record, _ = _drive([])
    record = UpdateRecord(**{**record.__dict__, "restarts": MAX_RESTARTS + 1})
    record, _ = step(record, E.RESUMED)
    assert record.state is S.FAILED


def test_misuse_raises() -> None:
    record, _ = _drive([])
    with pytest.raises(TransitionError):
        step(record, E.WATCH_PASSED)
    with pytest.raises(TransitionError):
        assign(record, deployment_id="other", plan={})


def test_every_table_state_is_reachable_and_terminal_states_leave_only_by_assignment() -> None:
    reachable = {S.DOWNLOADING} | set(TRANSITIONS.values())
    assert reachable | {S.IDLE} == set(UpdateState)
    for (state, event), _ in TRANSITIONS.items():
        if state in (S.COMMITTED, S.FAILED, S.ROLLED_BACK, S.IDLE):
            assert event is E.ASSIGNED


def test_record_store_round_trip_and_corruption(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "update.json")
    assert store.load() == UpdateRecord()
    record, _ = _drive(HAPPY[:4])
    store.save(record)
    assert store.load() == record
    (tmp_path / "update.json").write_text('{"format": 99}')
    with pytest.raises(StorageError):
        store.load()
    (tmp_path / "update.json").write_text("{")
    with pytest.raises(StorageError):
        store.load()
