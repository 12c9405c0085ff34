"""Cross-replica desired-state notifications and kicks (coordination/fanout.py) over the in-process
bus: coalesced and chunked under the payload limit, never delivered back to the origin, re-queued
when the bus refuses, and a reconnect runs the resync callback."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

from fleet_server.coordination.bus import MAX_PAYLOAD_BYTES, LocalBus
from fleet_server.coordination.fanout import DESIRED_CHANNEL, BusFanout


class Receiver:
    def __init__(self) -> None:
        self.ids: list[str] = []
        self.kicks: list[tuple[str, str, str]] = []
        self.resyncs = 0
        self.got = threading.Event()

    def desired(self, ids: list[str]) -> None:
        self.ids.extend(ids)
        self.got.set()

    def kick(self, device_id: str, code: str, detail: str) -> None:
        self.kicks.append((device_id, code, detail))
        self.got.set()

    def resync(self) -> None:
        self.resyncs += 1


def replicas(bus: LocalBus, *origins: str) -> list[tuple[BusFanout, Receiver]]:
    out = []
    for origin in origins:
        fanout, receiver = BusFanout(bus, origin, linger_s=0.02), Receiver()
        fanout.attach(desired=receiver.desired, kick=receiver.kick, resync=receiver.resync)
        out.append((fanout, receiver))
    return out


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    done = threading.Event()
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return True
        done.wait(0.02)
    return predicate()


def test_ids_reach_the_other_replicas_only_in_few_notifications() -> None:
    bus = LocalBus()
    (a, ra), (_, rb), (_, rc) = replicas(bus, "a", "b", "c")
    sent: list[str] = []
    bus.subscribe(DESIRED_CHANNEL, sent.append)
    bus.start()
    a.start()
    try:
        ids = [f"device-{i:05d}-with-a-longish-name" for i in range(5000)]
        for device_id in ids:
            a.desired_changed(device_id)
        a.desired_changed(ids[0])  # a duplicate queued again is sent once
        assert wait_for(lambda: len(rb.ids) >= 5000 and len(rc.ids) >= 5000)
        assert sorted(rb.ids) == sorted(ids) and sorted(rc.ids) == sorted(ids)
        assert ra.ids == []  # the bus delivers to the publisher too; the origin ignores its own
        assert all(len(p.encode()) <= MAX_PAYLOAD_BYTES for p in sent)
        assert len(sent) <= 2 * (5000 * 40 // MAX_PAYLOAD_BYTES + 1)  # many ids per notification
        assert a.stats.ids_published == 5000
    finally:
        a.stop()
        bus.stop()


def test_chunks_respect_the_limit_exactly() -> None:
    fanout = BusFanout(LocalBus(), "origin-replica", max_payload=200)
    ids = [f"d{i}" * (i % 7 + 1) for i in range(300)]
    chunks = list(fanout.chunks(ids))
    assert [i for c in chunks for i in c] == ids
    for chunk in chunks:
        assert len(json.dumps({"o": "origin-replica", "ids": chunk}).encode()) <= 200


def test_kick_reaches_the_others_with_its_code_and_a_bounded_detail() -> None:
    bus = LocalBus()
    (a, ra), (_, rb) = replicas(bus, "a", "b")
    bus.start()
    try:
        a.kick("dev-1", "PERMISSION_DENIED", "revoked " + "x" * 1000)
        assert rb.got.wait(5)
        ((device_id, code, detail),) = rb.kicks
        assert (device_id, code) == ("dev-1", "PERMISSION_DENIED") and len(detail) == 300
        assert ra.kicks == []
    finally:
        bus.stop()


class RefusingBus(LocalBus):
    def __init__(self) -> None:
        super().__init__()
        self.refuse = True

    def publish(self, channel: str, payload: str) -> None:
        if self.refuse:
            raise OSError("database unavailable")
        super().publish(channel, payload)


def test_ids_stay_queued_while_the_bus_refuses() -> None:
    bus = RefusingBus()
    (a, _), (_, rb) = replicas(bus, "a", "b")
    bus.start()
    try:
        a.desired_changed("x")
        a.desired_changed("y")
        assert a.flush() is False and a.stats.publish_errors == 1
        bus.refuse = False
        a.desired_changed("z")
        assert a.flush() is True
        assert wait_for(lambda: len(rb.ids) == 3)
        assert rb.ids == ["x", "y", "z"]
    finally:
        bus.stop()


def test_garbage_and_foreign_payloads_are_ignored() -> None:
    bus = LocalBus()
    ((_, rb),) = replicas(bus, "b")
    bus.start()
    try:
        bus.publish(DESIRED_CHANNEL, "not json")
        bus.publish(DESIRED_CHANNEL, json.dumps(["a", "list"]))
        bus.publish(DESIRED_CHANNEL, json.dumps({"o": "a", "ids": ["ok"]}))
        assert rb.got.wait(5)
        assert rb.ids == ["ok"]
    finally:
        bus.stop()
