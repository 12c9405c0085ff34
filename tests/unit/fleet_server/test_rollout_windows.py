"""Maintenance windows: the pure check shared by server and agent (protos/edgeloop/windows.py) —
days, midnight crossing, time zones and DST — the REST shape's bounds, and the engine holding a
batch until its download window opens (fake clock, real SQLite)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from fleet_server.rollouts.schemas import BatchPlan, RolloutCreate
from fleet_server.rollouts.states import RolloutEvent
from fleet_server.rollouts.windows import Windows, download_wait
from protos.edgeloop.windows import WindowError, describe_wait, is_open, next_open, parse
from tests.unit.fleet_server.test_rollout_engine import (
    FAST,
    OPERATOR,
    World,
    spec,
    world,  # noqa: F401 - the fixture (real SQLite, fake clock and OTA port)
)

# 2026-01-01 is a Thursday (weekday 3).
THU = datetime(2026, 1, 1, tzinfo=UTC)


def at(day: datetime, hh: int, mm: int = 0) -> datetime:
    return day.replace(hour=hh, minute=mm)


def test_no_windows_is_always_open_and_never_waits() -> None:
    assert is_open([], THU)
    assert next_open([], THU) == THU


def test_a_window_opens_on_its_days_from_start_inclusive_to_end_exclusive() -> None:
    w = parse([{"days": ["thu", 5], "start": "02:00", "end": "04:30", "tz": "UTC"}])
    assert not is_open(w, at(THU, 1, 59))
    assert is_open(w, at(THU, 2, 0))
    assert is_open(w, at(THU, 4, 29))
    assert not is_open(w, at(THU, 4, 30))
    assert not is_open(w, at(THU + timedelta(days=1), 3))  # friday: not listed
    assert is_open(w, at(THU + timedelta(days=2), 3))  # saturday = 5
    assert next_open(w, at(THU, 5)) == at(THU + timedelta(days=2), 2)
    assert next_open(w, at(THU, 3)) == at(THU, 3)  # open: now


def test_an_end_before_start_crosses_midnight_into_the_next_day() -> None:
    w = parse([{"days": ["wed"], "start": "22:00", "end": "02:00", "tz": "UTC"}])
    wed = THU - timedelta(days=1)
    assert is_open(w, at(wed, 23))
    assert is_open(w, at(THU, 1, 59))  # thursday morning belongs to wednesday's window
    assert not is_open(w, at(THU, 2))
    assert not is_open(w, at(THU, 23))  # thursday is not listed
    assert next_open(w, at(THU, 12)) == at(wed + timedelta(days=7), 22)


def test_local_time_in_the_windows_zone() -> None:
    w = parse([{"days": [3], "start": "09:00", "end": "10:00", "tz": "America/New_York"}])
    assert not is_open(w, at(THU, 9, 30))  # 09:30 UTC is 04:30 in New York
    assert is_open(w, at(THU, 14, 30))  # EST = UTC-5
    assert next_open(w, at(THU, 0)) == at(THU, 14)


def test_dst_spring_forward_a_start_in_the_gap_opens_after_it() -> None:
    # Europe/Berlin, Sunday 2026-03-29: 02:00 CET jumps to 03:00 CEST (01:00 UTC).
    w = parse([{"days": ["sun"], "start": "02:30", "end": "04:00", "tz": "Europe/Berlin"}])
    sun = datetime(2026, 3, 29, tzinfo=UTC)
    assert not is_open(w, at(sun, 0, 59))
    assert is_open(w, at(sun, 1, 0))  # 03:00 CEST, the first instant after the gap
    assert not is_open(w, at(sun, 2, 0))  # 04:00 CEST
    assert next_open(w, at(sun, 0)) == at(sun, 1)
    # A week later (CEST all day) the same window is 00:30-02:00 UTC.
    assert next_open(w, at(sun, 3)) == at(sun + timedelta(days=7), 0, 30)


def test_dst_fall_back_an_ambiguous_time_means_its_first_occurrence() -> None:
    # Europe/Berlin, Sunday 2026-10-25: 03:00 CEST falls back to 02:00 CET (01:00 UTC).
    w = parse([{"days": ["sun"], "start": "02:00", "end": "02:30", "tz": "Europe/Berlin"}])
    sun = datetime(2026, 10, 25, tzinfo=UTC)
    assert is_open(w, at(sun, 0, 15))  # 02:15 CEST
    assert not is_open(w, at(sun, 1, 15))  # 02:15 CET, the second occurrence
    # Midnight crossing over the change: Saturday 23:00 to Sunday 04:00 local is 6 h long.
    w2 = parse([{"days": ["sat"], "start": "23:00", "end": "04:00", "tz": "Europe/Berlin"}])
    assert is_open(w2, at(sun - timedelta(days=1), 21, 0))  # 23:00 CEST
    assert is_open(w2, at(sun, 2, 59))  # 03:59 CET
    assert not is_open(w2, at(sun, 3, 0))


def test_bad_windows_are_refused() -> None:
    for bad in (
        {"days": [7], "start": "01:00", "end": "02:00"},
        {"days": ["funday"], "start": "01:00", "end": "02:00"},
        {"days": [], "start": "01:00", "end": "02:00"},
        {"days": [1], "start": "24:00", "end": "02:00"},
        {"days": [1], "start": "1:00", "end": "02:00"},
        {"days": [1], "start": "01:00", "end": "02:00", "tz": "Mars/Olympus_Mons"},
        {"days": [1], "start": "01:00", "end": "02:00", "tz": "../etc/passwd"},
    ):
        with pytest.raises(WindowError):
            parse([bad])
    with pytest.raises(ValueError, match="aware"):
        is_open(parse([{"days": [1], "start": "01:00", "end": "02:00"}]), datetime(2026, 1, 1))


def test_the_rest_shape_bounds_windows_and_refuses_unknown_zones() -> None:
    ok = RolloutCreate.model_validate(
        {
            "releases": [1],
            "windows": {
                "download": [{"days": ["mon", 2], "start": "22:00", "end": "02:00", "tz": "Europe/Berlin"}],
                "apply": [],
            },
        }
    )
    assert ok.windows.download[0].days == ["mon", 2]
    assert RolloutCreate.model_validate({"releases": [1]}).windows == Windows()
    for bad in (
        {"download": [{"days": [1], "start": "01:00", "end": "02:00", "tz": "Nowhere/Atlantis"}]},
        {"download": [{"days": [8], "start": "01:00", "end": "02:00"}]},
        {"apply": [{"days": [1], "start": "25:00", "end": "02:00"}]},
        {"download": [{"days": [1], "start": "01:00", "end": "02:00"}] * 33},
        {"later": []},
    ):
        with pytest.raises(ValidationError):
            RolloutCreate.model_validate({"releases": [1], "windows": bad})
    schema = RolloutCreate.model_json_schema()
    assert "windows" in schema["properties"]


def test_download_wait_names_the_next_opening() -> None:
    spec = {"windows": {"download": [{"days": [3], "start": "02:00", "end": "03:00", "tz": "UTC"}]}}
    assert download_wait(spec, at(THU, 2, 30)) is None
    assert download_wait({}, THU) is None  # rollouts created before windows existed
    assert download_wait(spec, THU) == "waiting for the download window, opens at 2026-01-01T02:00:00+00:00"
    assert describe_wait(parse(spec["windows"]["download"]), at(THU, 4), "apply").endswith(
        "2026-01-08T02:00:00+00:00"
    )


# ---------------------------------------------------------------- the engine's download window

# Thursdays 02:00-02:10 UTC only (the world's clock starts Thursday 2026-01-01 00:00 UTC).
NARROW = {"download": [{"days": ["thu"], "start": "02:00", "end": "02:10", "tz": "UTC"}]}


def test_a_batch_is_not_assigned_outside_the_download_window_and_is_at_its_opening(world: World) -> None:  # noqa: F811
    world.devices(20)
    eng = world.engine()
    rid = eng.create(spec(world, batches=BatchPlan(percents=[10, 100]), windows=NARROW), OPERATOR)
    row = world.row(rid)
    assert row.state == "running" and row.batch == 0
    assert row.reason == "waiting for the download window, opens at 2026-01-01T02:00:00+00:00"
    assert world.ota.deployments == []
    for _ in range(7):  # until 01:59: nothing assigned, and nobody is silent for it
        world.clock.advance(17 * 60)
        eng.tick()
        assert world.ota.deployments == []
        assert {r.status for r in world.devs(rid).values()} == {"pending"}
    world.clock.now = at(THU, 2, 0)
    eng.tick()
    canary = world.batch_devices(rid, 0)
    assert world.ota.deployments == [(world.new, canary)]
    assert world.row(rid).reason == ""
    assert world.audit.verify().ok and "rollout.start" in world.audit.actions()


def test_outside_the_window_no_silent_timeout_runs_and_later_batches_wait_a_week(world: World) -> None:  # noqa: F811
    world.devices(20)
    eng = world.engine()
    world.clock.now = at(THU, 2, 0)
    rid = eng.create(spec(world, batches=BatchPlan(percents=[10, 100]), windows=NARROW), OPERATOR)
    canary = world.batch_devices(rid, 0)
    assert world.ota.deployments == [(world.new, canary)]
    world.clock.now = at(THU, 2, 20)  # past FAST.silent_timeout_s (300 s), window closed
    eng.tick()
    assert {r.status for d, r in world.devs(rid).items() if d in canary} == {"assigned"}
    world.report(canary, "committed", rid)
    for _ in range(8):  # gates pass; batch 1 is due but the window is closed until next Thursday
        world.clock.advance(60)
        eng.tick()
    row = world.row(rid)
    assert row.state == "running" and row.batch == 1, (row.state, row.reason)
    assert row.reason == "waiting for the download window, opens at 2026-01-08T02:00:00+00:00"
    assert len(world.ota.deployments) == 1
    assert "rollout.gates_passed" in world.audit.actions()  # the audit effect ran, the assignment waits
    world.clock.now = at(THU + timedelta(days=7), 2, 5)
    eng.tick()
    assert len(world.ota.deployments) == 2 and world.row(rid).reason == ""


def test_an_operator_can_abort_a_rollout_waiting_for_its_window(world: World) -> None:  # noqa: F811
    world.devices(10)
    eng = world.engine()
    rid = eng.create(spec(world, batches=BatchPlan(percents=[100]), windows=NARROW), OPERATOR)
    eng.act(rid, RolloutEvent.ABORT, OPERATOR, "not this week")
    row = world.row(rid)
    assert row.state == "aborted" and row.pending_effects == []
    world.clock.now = at(THU, 2, 1)
    eng.tick()
    assert world.ota.deployments == []
    assert FAST.silent_timeout_s == 300


def test_the_apply_windows_go_with_every_batch_deployment_but_not_with_the_rollback(
    world: World,  # noqa: F811
) -> None:
    from sqlmodel import Session

    from tests.unit.fleet_server.test_rollout_engine import FakeOta

    class RecordingOta(FakeOta):
        def __init__(self) -> None:
            super().__init__()
            self.windows: list[object] = []

        def deploy(
            self, *, session: Session, release_seq: int, device_ids: list[str], apply_windows: object = None
        ) -> str:
            self.windows.append(apply_windows)
            return super().deploy(session=session, release_seq=release_seq, device_ids=device_ids)

    world.ota = RecordingOta()
    world.devices(10)
    eng = world.engine()
    apply = [{"days": ["sat", "sun"], "start": "23:00", "end": "05:00", "tz": "Europe/Berlin"}]
    rid = eng.create(spec(world, batches=BatchPlan(percents=[100]), windows={"apply": apply}), OPERATOR)
    assert world.ota.windows == [apply]  # no download window: assigned at once, apply windows attached
    eng.act(rid, RolloutEvent.ROLLBACK, OPERATOR, "test")
    assert world.ota.windows[1:] == [None]  # the rollback switches back at once


def test_a_device_awaiting_its_apply_window_is_not_silent_and_is_timed_from_its_last_report(
    world: World,  # noqa: F811
) -> None:
    from sqlmodel import Session, select

    from fleet_server.ota.models import OtaDeviceStatus
    from fleet_server.rollouts.models import RolloutDevice

    world.devices(10)
    eng = world.engine()
    rid = eng.create(spec(world, batches=BatchPlan(counts=[2])), OPERATOR)
    a, b = world.batch_devices(rid, 0)

    def report(device: str, state: str) -> None:
        with Session(world.db) as s:
            rd = s.exec(
                select(RolloutDevice).where(
                    RolloutDevice.rollout_id == rid, RolloutDevice.device_id == device
                )
            ).one()
            row = s.get(OtaDeviceStatus, (device, rd.deployment_id))
            assert row is not None
            row.state, row.updated_at = state, world.clock.now
            s.add(row)
            s.commit()

    report(a, "awaiting_window")
    report(b, "awaiting_window")
    world.clock.advance(FAST.silent_timeout_s * 10)
    eng.tick()
    assert {r.status for d, r in world.devs(rid).items() if d in (a, b)} == {"assigned"}
    report(a, "watching")  # its window opened: it switched just now
    world.clock.advance(FAST.silent_timeout_s / 2)
    eng.tick()
    assert world.devs(rid)[a].status == "assigned"
    world.clock.advance(FAST.silent_timeout_s)  # then nothing more from it
    eng.tick()
    assert world.devs(rid)[a].status == "silent" and world.devs(rid)[b].status == "assigned"


def test_the_cli_window_syntax() -> None:
    from fleet_server.rollouts.cli import parse_window

    w = parse_window("sat,SUN,0 22:00-04:00 Europe/Berlin")
    assert w == {"days": ["sat", "sun", 0], "start": "22:00", "end": "04:00", "tz": "Europe/Berlin"}
    assert parse_window("mon 01:00-02:00")["tz"] == "UTC"
    assert Windows.model_validate({"download": [w]}).download[0].tz == "Europe/Berlin"
    with pytest.raises(SystemExit):
        parse_window("mon")
