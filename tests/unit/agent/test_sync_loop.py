"""SyncLoop against FakeFleet: delivery, resend after a broken session, backoff, reconcile."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from agent.config import AgentConfig, SyncConfig, TelemetryConfig
from agent.outbox import TelemetryOutbox
from agent.state import AgentSettings, DesiredState, Resources
from agent.statefile import StateFile
from agent.sync import Reconciler, SyncLoop
from tests.fakes.fleet import FakeClock, FakeFleet

RES = Resources(0.1, 1, 1, 1, float("nan"), 1)


def _loop(tmp_path: Path, fleet: FakeFleet, **sync_kw: float) -> tuple[SyncLoop, TelemetryOutbox]:
    cfg = AgentConfig(
        telemetry=TelemetryConfig(batch_max=7, max_in_flight_batches=2),
        sync=SyncConfig(backoff_initial_s=0.01, backoff_max_s=0.05, shutdown_flush_s=2.0, **sync_kw),
    )
    outbox = TelemetryOutbox(tmp_path / "outbox.db", max_records=10_000)
    loop = SyncLoop(
        config=cfg,
        device_id="dev-1",
        outbox=outbox,
        connector=fleet,
        reconciler=Reconciler(StateFile(tmp_path / "state.json")),
        clock=FakeClock(),
        resources=lambda: RES,
        status_path=tmp_path / "status.json",
        rng=random.Random(1),
    )
    return loop, outbox


async def _produce_and_stop(loop: SyncLoop, outbox: TelemetryOutbox, n: int, run_for: float = 0.5) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    for i in range(n):
        outbox.append(timestamp_ms=i, kind="t", metrics={"i": float(i)})
        loop.telemetry_ready.set()
        await asyncio.sleep(0)
    await asyncio.sleep(run_for)
    stop.set()
    await asyncio.wait_for(task, 10)


def test_all_records_delivered_once_and_deleted(tmp_path: Path) -> None:
    fleet = FakeFleet(desired=DesiredState(generation=1, settings=AgentSettings(max_messages_per_s=1000)))
    loop, outbox = _loop(tmp_path, fleet)
    asyncio.run(_produce_and_stop(loop, outbox, 100))
    assert sorted(fleet.received) == list(range(1, 101))
    assert set(fleet.received.values()) == {1}
    assert outbox.stats().queued == 0
    assert fleet.reports and fleet.reports[0].device_id == "dev-1"


def test_broken_sessions_resend_unacked_and_nothing_is_lost(tmp_path: Path) -> None:
    fleet = FakeFleet(
        desired=DesiredState(generation=1, settings=AgentSettings(max_messages_per_s=1000)),
        drop_after_messages=3,
        refuse_next=0,
    )
    loop, outbox = _loop(tmp_path, fleet)
    asyncio.run(_produce_and_stop(loop, outbox, 60, run_for=1.5))
    assert fleet.sessions > 3  # it really broke and reconnected
    assert sorted(fleet.received) == list(range(1, 61))  # every record arrived
    assert outbox.stats().queued == 0  # and every one was acked exactly when stored


def test_a_lost_batch_ends_the_session_after_the_ack_timeout_and_is_resent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fleet = FakeFleet(
        desired=DesiredState(generation=1, settings=AgentSettings(max_messages_per_s=1000)), lose_telemetry=2
    )
    loop, outbox = _loop(tmp_path, fleet, ack_timeout_s=0.2)
    asyncio.run(_produce_and_stop(loop, outbox, 30, run_for=1.5))
    assert fleet.sessions >= 2  # the unacked batches ended the first session
    assert "not acked within 0.2s" in caplog.text
    assert sorted(fleet.received) == list(range(1, 31))  # resent in the next one
    assert outbox.stats().queued == 0

    stuck = FakeFleet(
        desired=DesiredState(generation=1, settings=AgentSettings(max_messages_per_s=1000)), lose_telemetry=2
    )
    loop2, outbox2 = _loop(tmp_path / "b", stuck)  # default timeout (30 s): still waiting
    asyncio.run(_produce_and_stop(loop2, outbox2, 30, run_for=0.5))
    assert stuck.sessions == 1 and outbox2.stats().queued > 0


def test_backoff_on_refused_and_rejected(tmp_path: Path) -> None:
    fleet = FakeFleet(refuse_next=3)
    loop, outbox = _loop(tmp_path, fleet)
    asyncio.run(_produce_and_stop(loop, outbox, 1, run_for=0.4))
    assert fleet.attempts >= 4 and fleet.sessions >= 1
    assert "refused" not in loop.status.last_error

    rejected = FakeFleet(reject=True)
    loop2, outbox2 = _loop(tmp_path / "b", rejected)
    asyncio.run(_produce_and_stop(loop2, outbox2, 1, run_for=0.3))
    # A rejected device waits the maximum backoff (0.05 s) between attempts, not the minimum.
    assert rejected.attempts <= 8
    assert "revoked" in loop2.status.last_error
    assert outbox2.stats().queued == 1  # nothing deleted without an ack


def test_desired_state_applied_persisted_and_stale_ignored(tmp_path: Path) -> None:
    state = StateFile(tmp_path / "state.json")
    rec = Reconciler(state)
    rec.apply(DesiredState(generation=3, settings=AgentSettings(report_interval_s=5), labels={"a": "b"}))
    assert rec.observed.applied_generation == 3 and rec.observed.settings.report_interval_s == 5
    rec.apply(DesiredState(generation=2, settings=AgentSettings(report_interval_s=99)))
    assert rec.observed.settings.report_interval_s == 5
    assert Reconciler(state).observed.labels == {"a": "b"}  # survives a restart
