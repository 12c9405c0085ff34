"""Fleet view pure parts: the event diff, the hub's fan-out (a slow subscriber is dropped, the
others keep their events), the columns derived from a report, and the series bucket arithmetic."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from fleet_server.fleetview.columns import reported_health, running_model
from fleet_server.fleetview.events import EventHub, HubClosedError, Snapshot, diff
from fleet_server.fleetview.series import Buckets

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = datetime(2026, 1, 1, 0, 1, tzinfo=UTC)


def _snap(online: set[str] = frozenset(), **devices: tuple[datetime | None, str, int]) -> Snapshot:
    return Snapshot(online=frozenset(online), devices=dict(devices))


def test_first_reading_is_only_the_fleet_counts() -> None:
    assert diff(None, _snap({"a"}, a=(T0, "active", 1), b=(None, "active", 1))) == [
        ("fleet", {"total": 2, "online": 1, "offline": 1})
    ]


def test_flips_labels_revocations_and_last_seen_become_device_events() -> None:
    old = _snap(set(), a=(T0, "active", 1), b=(T0, "active", 1), c=(T0, "active", 1), d=(T0, "active", 1))
    new = _snap({"a"}, a=(T0, "active", 1), b=(T0, "active", 2), c=(T0, "revoked", 1), d=(T1, "active", 1))
    events = diff(old, new)
    assert events[0] == ("fleet", {"total": 4, "online": 1, "offline": 3})
    assert [(n, d["id"]) for n, d in events[1:]] == [("device", "a"), ("device", "b"), ("device", "c"),
                                                      ("device", "d")]  # fmt: skip
    assert events[1][1] == {"id": "a", "online": True, "last_seen_at": T0.isoformat()}
    assert diff(new, new) == []


def test_rollout_run_and_audit_changes() -> None:
    old = Snapshot(frozenset(), {}, rollouts={"r": ("running", 0)}, runs={"f": ("running", 1)}, audit_head=5)
    new = Snapshot(frozenset(), {}, rollouts={"r": ("running", 1)}, runs={"f": ("running", 2)}, audit_head=6)
    assert diff(old, new) == [
        ("rollout", {"id": "r", "state": "running", "batch": 1}),
        ("run", {"id": "f", "state": "running", "round": 2}),
        ("audit", {"head_seq": 6}),
    ]


def test_a_slow_subscriber_is_dropped_and_the_others_keep_their_events() -> None:
    async def scenario() -> None:
        n = 0

        def read(online: frozenset[str]) -> Snapshot:
            nonlocal n
            n += 1
            return Snapshot(online=online, devices={}, audit_head=n)

        hub = EventHub(read=read, online=set, interval_s=0.01, queue_max=4)
        slow, fast = hub.subscribe(), hub.subscribe()
        got: list[str] = []

        async def consume() -> None:
            async for text in hub.stream(fast):
                got.append(text)
                if len(got) >= 12:
                    return

        await asyncio.wait_for(consume(), 10)
        assert slow.dropped and not fast.dropped
        assert hub.stats.dropped_subscribers == 1
        assert slow.queue.get_nowait() is None  # its stream ends at once
        assert sum("event: audit" in t for t in got) >= 8
        await hub.close()
        assert hub.stats.subscribers == 0

    asyncio.run(scenario())


def test_close_ends_every_stream_and_refuses_new_ones() -> None:
    async def scenario() -> None:
        hub = EventHub(read=lambda o: Snapshot(o, {}), online=set, interval_s=0.01)
        sub = hub.subscribe()
        texts = []
        async for text in hub.stream(sub):
            texts.append(text)
            await hub.close()  # after the first frame: the stream must end, not hang
        assert texts[0].startswith("retry:") and hub.stats.subscribers == 0
        with pytest.raises(HubClosedError, match="shutting down"):
            hub.subscribe()

    asyncio.run(scenario())


def test_running_model_and_reported_health_from_observed() -> None:
    slots = [
        {"slot": "previous", "model_name": "digits", "model_version": "2"},
        {"slot": "default", "model_name": "digits", "model_version": "3"},
    ]
    assert running_model({"slots": slots}) == "digits@3"
    assert running_model({"slots": [{"slot": "x", "model_name": "m", "model_version": "1"}]}) == "m@1"
    assert running_model({"slots": [{"slot": "default", "model_name": ""}]}) == ""
    assert running_model({"slots": "garbage"}) == "" and running_model({}) == "" and running_model(None) == ""
    assert reported_health({"health": "failing"}) == "failing"
    assert reported_health({"health": "<script>"}) == "unknown" and reported_health({}) == "unknown"


def test_buckets_put_the_window_end_in_the_last_bucket() -> None:
    b = Buckets(start_s=1000.0, step_s=10.0, points=6)
    assert b.index(1000.0) == 0 and b.index(1059.9) == 5 and b.index(1060.0) == 5
    assert b.index(999.0) is None and b.index(1061.0) is None
    assert b.first_end_at_or_after(1000.0) == 0 and b.first_end_at_or_after(1010.0) == 0
    assert b.first_end_at_or_after(1010.5) == 1 and b.first_end_at_or_after(5000.0) == 6
