"""The pure update machine: scenario table over the transition table, crash-loop detection,
misuse guards, and the record store."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import StorageError
from agent.ota.machine import (
    MAX_RESTARTS,
    Report,
    RunState,
    TransitionError,
    UpdateRecord,
    assign,
    refuse,
    step,
)
from agent.ota.states import GIVE_UP, TERMINAL, TRANSITIONS, UpdateEvent, UpdateState
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
    for (state, event), target in TRANSITIONS.items():
        if state in TERMINAL:
            assert event is E.ASSIGNED or (event is E.METADATA_REFUSED and target is S.REFUSED)
    # every in-flight state but committing and awaiting_window (their work cannot fail) can give up
    assert set(GIVE_UP) == set(UpdateState) - TERMINAL - {S.COMMITTING, S.AWAITING_WINDOW}
    for state, event in GIVE_UP.items():
        assert (state, event) in TRANSITIONS


def test_transient_failures_retry_with_bounded_attempts_then_fail_with_the_reason() -> None:
    record, _ = _drive([])
    details = []
    for n in range(1, 4):
        record, effects = step(record, E.RETRY, detail="truncated at 20000 of 90000 bytes", max_attempts=4)
        assert record.state is S.DOWNLOADING and record.attempts == n
        report, run = effects
        assert isinstance(report, Report) and report.event is E.RETRY and report.to_state is S.DOWNLOADING
        assert run == RunState(S.DOWNLOADING, attempt=n)
        details.append(report.detail)
    assert details[0] == "attempt 1/4 failed: truncated at 20000 of 90000 bytes"
    record, effects = step(record, E.RETRY, detail="truncated at 20000 of 90000 bytes", max_attempts=4)
    assert record.state is S.FAILED and effects == [
        Report("dep", 7, record.transition, S.DOWNLOADING, S.FAILED, E.DOWNLOAD_FAILED,
               "gave up after 4 attempts: truncated at 20000 of 90000 bytes")
    ]  # fmt: skip
    # a newer deployment is not blocked by the failed one
    record, effects = assign(record, deployment_id="dep2", plan={"release_seq": 8})
    assert record.state is S.DOWNLOADING and record.attempts == 0


def test_attempts_reset_on_progress_and_survive_restarts() -> None:
    record, _ = _drive([])
    record, _ = step(record, E.RETRY, detail="x")
    record, _ = step(record, E.RESUMED)  # a restart keeps the count and does not reset the bound
    assert record.attempts == 1 and record.save_count == 2
    record, effects = step(record, E.DOWNLOADED)
    assert record.attempts == 0 and effects[-1] == RunState(S.VERIFYING)


def test_retry_after_the_switch_gives_up_through_revert() -> None:
    record, _ = _drive(HAPPY[:6])
    assert record.state is S.WATCHING
    record, _ = step(record, E.RETRY, detail="disk", max_attempts=1)
    assert record.state is S.REVERTING and record.detail == "gave up after 1 attempts: disk"
    with pytest.raises(TransitionError):
        step(UpdateRecord(), E.RETRY)


def test_metadata_refusal_is_reported_against_the_desired_deployment_and_left_by_assignment() -> None:
    record, _ = _drive(HAPPY)
    assert record.state is S.COMMITTED
    record, effects = refuse(
        record, deployment_id="dep9", release_seq=9, detail="OTA metadata refused: rollback"
    )
    assert record.state is S.REFUSED and record.deployment_id == "dep9"
    assert effects == [
        Report("dep9", 9, record.transition, S.COMMITTED, S.REFUSED, E.METADATA_REFUSED,
               "OTA metadata refused: rollback")
    ]  # fmt: skip
    record, effects = assign(record, deployment_id="dep9", plan={"release_seq": 9})
    assert record.state is S.DOWNLOADING and isinstance(effects[0], Report)
    with pytest.raises(TransitionError):
        refuse(record, deployment_id="dep10", release_seq=10, detail="in flight")
    with pytest.raises(TransitionError):
        step(record, E.METADATA_REFUSED)


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
