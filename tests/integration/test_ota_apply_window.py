"""Apply windows end to end in process: the window list travels in the signed per-device
assignment (real TUF repository over loopback HTTP), the real agent downloads, verifies, stages and
runs its golden/shadow gates at once, waits in `awaiting_window` (reported like every transition)
and switches only when its injected wall clock enters the window; a restart while waiting stages
and gates again and waits again, never switching early."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.ota.states import UpdateState
from tests.integration.test_ota_support import FleetSide, check, fleet_side, models, start_device

pytestmark = pytest.mark.timeout(120)

# Thursdays 02:00-03:00 in New York (07:00-08:00 UTC in January).
WINDOWS = [{"days": ["thu"], "start": "02:00", "end": "03:00", "tz": "America/New_York"}]
THU = datetime(2026, 1, 1, tzinfo=UTC)


class WallClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[FleetSide]:
    yield from fleet_side(tmp_path / "server")


async def _until(pred: object, timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_a_staged_update_waits_for_its_apply_window_and_switches_when_it_opens(
    tmp_path: Path, fleet: FleetSide
) -> None:
    m = models()
    clock = WallClock(THU + timedelta(hours=5))  # 00:00 in New York: closed

    async def scenario() -> None:
        dev = await start_device(tmp_path, fleet, wall_clock=clock, window_poll_s=0.05)
        try:
            dep1 = fleet.deploy(fleet.publish(m.v1, "1", golden=m.golden, golden_threshold=0.8), "dev-1")
            await check(dev)
            assert dev.reports.chain(dep1)[-1] == "committed"
            seq2 = fleet.publish(m.v2, "2", golden=m.golden, golden_threshold=0.8)
            dep2 = fleet.deploy(seq2, "dev-1", apply_windows=WINDOWS)
            stop = asyncio.Event()
            task = asyncio.create_task(dev.client.check_once(stop))
            await _until(lambda: dev.client.record.state is UpdateState.AWAITING_WINDOW)
            assert dev.reports.chain(dep2) == [
                "downloading", "verifying", "staging", "golden_check", "shadowing", "awaiting_window",
            ]  # fmt: skip
            waiting = dev.reports.items[-1]
            assert waiting["event"] == "window_closed"
            assert "waiting for the apply window, opens at 2026-01-01T07:00:00+00:00" in waiting["detail"]
            for _ in range(10):  # polls of the window: still closed, still serving v1
                await asyncio.sleep(0.06)
                assert dev.service.serving().version == "1"  # type: ignore[union-attr]
            clock.now = THU + timedelta(hours=6, minutes=59)
            await asyncio.sleep(0.2)
            assert dev.client.record.state is UpdateState.AWAITING_WINDOW
            clock.now = THU + timedelta(hours=7)  # 02:00 in New York: open
            await asyncio.wait_for(task, 60)
            assert dev.reports.chain(dep2)[-4:] == ["switching", "watching", "committing", "committed"]
            assert dev.service.serving().version == "2"  # type: ignore[union-attr]
        finally:
            await dev.service.stop()

    asyncio.run(scenario())


def test_a_device_restarted_while_awaiting_its_window_waits_again_and_never_switches_early(
    tmp_path: Path, fleet: FleetSide
) -> None:
    m = models()
    clock = WallClock(THU)  # 19:00 Wednesday in New York

    async def scenario() -> None:
        dev = await start_device(tmp_path, fleet, wall_clock=clock, window_poll_s=0.05)
        dep1 = fleet.deploy(fleet.publish(m.v1, "1", golden=m.golden, golden_threshold=0.8), "dev-1")
        await check(dev)
        assert dev.reports.chain(dep1)[-1] == "committed"
        dep2 = fleet.deploy(
            fleet.publish(m.v2, "2", golden=m.golden, golden_threshold=0.8), "dev-1", apply_windows=WINDOWS
        )
        stop = asyncio.Event()
        task = asyncio.create_task(dev.client.check_once(stop))
        await _until(lambda: dev.client.record.state is UpdateState.AWAITING_WINDOW)
        stop.set()  # the agent stops (power cut / restart) while waiting
        await asyncio.wait_for(task, 30)
        await dev.service.stop()

        dev2 = await start_device(tmp_path, fleet, wall_clock=clock, window_poll_s=0.05)  # same root
        try:
            assert dev2.client.record.state is UpdateState.AWAITING_WINDOW  # persisted
            stop2 = asyncio.Event()
            run = asyncio.create_task(dev2.client.run(stop2))
            await _until(
                lambda: (
                    dev2.reports.chain(dep2)[-1:] == ["awaiting_window"]
                    and "staging" in dev2.reports.chain(dep2)
                )
            )
            assert dev2.reports.chain(dep2) == ["staging", "golden_check", "shadowing", "awaiting_window"]
            assert dev2.service.serving().version == "1"  # type: ignore[union-attr]
            clock.now = THU + timedelta(hours=7, minutes=30)
            await _until(lambda: dev2.client.record.state is UpdateState.COMMITTED)
            assert dev2.service.serving().version == "2"  # type: ignore[union-attr]
            stop2.set()
            await asyncio.wait_for(run, 30)
        finally:
            await dev2.service.stop()

    asyncio.run(scenario())
