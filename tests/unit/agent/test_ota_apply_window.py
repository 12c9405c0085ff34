"""The apply window on the device, sans-IO: the machine's `awaiting_window` state between the gates
and the switch (reported like every transition; a restart stages and gates again, never switches),
and the work of that state with an injected wall clock (no models, no network)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.ota.machine import Report, RunState, UpdateRecord, assign, step
from agent.ota.states import SWITCHED_STATES, TERMINAL, UpdateEvent, UpdateState
from agent.ota.trust import Plan, TargetRef
from agent.ota.work import Work, WorkLimits

S, E = UpdateState, UpdateEvent
THU = datetime(2026, 1, 1, tzinfo=UTC)  # a Thursday
WINDOWS = [{"days": [3], "start": "02:00", "end": "02:30", "tz": "UTC"}]


def _gated() -> UpdateRecord:
    record, _ = assign(UpdateRecord(), deployment_id="dep", plan={"release_seq": 7})
    for event in (E.DOWNLOADED, E.VERIFIED, E.STAGED, E.GOLDEN_PASSED):
        record, _ = step(record, event)
    assert record.state is S.SHADOWING
    return record


def test_gates_passed_outside_the_window_wait_and_the_opening_switches() -> None:
    record, effects = step(_gated(), E.WINDOW_CLOSED, detail="waiting for the apply window, opens at …")
    assert record.state is S.AWAITING_WINDOW
    report = next(e for e in effects if isinstance(e, Report))
    assert (report.from_state, report.to_state, report.event) == (
        S.SHADOWING,
        S.AWAITING_WINDOW,
        E.WINDOW_CLOSED,
    )
    assert RunState(S.AWAITING_WINDOW) in effects
    assert S.AWAITING_WINDOW not in TERMINAL and S.AWAITING_WINDOW not in SWITCHED_STATES
    record, effects = step(record, E.WINDOW_OPENED)
    assert record.state is S.SWITCHING and RunState(S.SWITCHING) in effects


def test_a_restart_while_awaiting_the_window_stages_again_and_never_switches() -> None:
    record, _ = step(_gated(), E.WINDOW_CLOSED)
    record, _ = step(record, E.RESUMED)
    assert record.state is S.STAGING  # the candidate is reloaded and gated again, then waits again
    for event in (E.STAGED, E.GOLDEN_PASSED, E.WINDOW_CLOSED):
        record, _ = step(record, event)
    assert record.state is S.AWAITING_WINDOW


class FakeServing:
    """Only what Work's constructor and the window wait touch."""

    def held_models(self) -> list[tuple[str, str]]:
        return []

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the window wait must not touch serving.{name}")


class WallClock:
    def __init__(self) -> None:
        self.now = THU

    def __call__(self) -> datetime:
        return self.now


def _plan(windows: list[dict[str, Any]]) -> Plan:
    ref = TargetRef("releases/1/m.onnx", "http://x/m.onnx", 1, "a" * 64)
    return Plan("dep", 7, "digits", "2", ref, None, None, 0.0, apply_windows=windows)


def test_the_window_work_waits_on_the_injected_wall_clock(tmp_path: Path) -> None:
    clock = WallClock()
    work = Work(
        directory=tmp_path,
        downloader=None,  # type: ignore[arg-type]
        serving=FakeServing(),  # type: ignore[arg-type]
        resources=lambda: (1 << 40, 1 << 40),
        limits=WorkLimits(window_poll_s=0.01),
        wall_clock=clock,
    )

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(work.await_window(_plan(WINDOWS), stop))
        await asyncio.sleep(0.1)
        assert not task.done()  # 00:00: closed
        clock.now = THU + timedelta(hours=2, minutes=30)
        await asyncio.sleep(0.05)
        assert not task.done()  # 02:30: the end is exclusive
        clock.now = THU + timedelta(days=7, hours=2, minutes=1)
        outcome = await asyncio.wait_for(task, 5)
        assert outcome is not None and outcome.event is E.WINDOW_OPENED
        stopped = asyncio.create_task(work.await_window(_plan(WINDOWS), stop))
        clock.now = THU
        stop.set()
        assert await asyncio.wait_for(stopped, 5) is None  # stopping: waits again after the restart
        assert (await work.await_window(_plan([]), asyncio.Event())) is not None  # no windows: open

    asyncio.run(scenario())
