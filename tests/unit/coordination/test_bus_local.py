"""LocalBus: the in-process bus has PgBus's semantics (handlers on the bus thread, size limit)."""

from __future__ import annotations

import threading

import pytest

from fleet_server.coordination.bus import MAX_PAYLOAD_BYTES, LocalBus, PayloadTooLarge, build_bus
from fleet_server.errors import InvalidRequestError


def test_publish_reaches_subscribers_of_the_channel_on_the_bus_thread() -> None:
    bus = LocalBus()
    got: list[tuple[str, str]] = []
    done = threading.Event()

    def on_a(payload: str) -> None:
        got.append((payload, threading.current_thread().name))
        if len(got) == 2:
            done.set()

    bus.subscribe("edgeloop_a", on_a)
    bus.subscribe("edgeloop_b", lambda p: got.append(("wrong channel", p)))
    bus.start()
    try:
        bus.publish("edgeloop_a", "1")
        bus.publish("edgeloop_a", "2")
        assert done.wait(5)
    finally:
        bus.stop()
    assert [p for p, _ in got] == ["1", "2"]
    assert all(name == "bus-local" for _, name in got)


def test_a_failing_handler_does_not_stop_delivery() -> None:
    bus = LocalBus()
    got = threading.Event()

    def bad(_: str) -> None:
        raise RuntimeError("boom")

    bus.subscribe("edgeloop_a", bad)
    bus.subscribe("edgeloop_a", lambda _: got.set())
    bus.start()
    try:
        bus.publish("edgeloop_a", "x")
        assert got.wait(5)
    finally:
        bus.stop()


def test_payload_over_the_limit_is_refused() -> None:
    bus = LocalBus()
    bus.publish("edgeloop_a", "x" * MAX_PAYLOAD_BYTES)
    with pytest.raises(PayloadTooLarge, match="bytes"):
        bus.publish("edgeloop_a", "é" * (MAX_PAYLOAD_BYTES // 2 + 1))  # counted in UTF-8 bytes
    assert issubclass(PayloadTooLarge, InvalidRequestError)


def test_channel_names_must_be_lower_case_identifiers() -> None:
    with pytest.raises(InvalidRequestError):
        LocalBus().publish('x"; DROP', "")


def test_build_bus_is_local_on_sqlite() -> None:
    from fleet_server.db import make_engine

    assert isinstance(build_bus(make_engine("sqlite://")), LocalBus)


def test_a_subscription_made_after_start_is_served() -> None:
    bus = LocalBus()
    got = threading.Event()
    bus.start()
    try:
        bus.subscribe("edgeloop_late", lambda _: got.set())
        bus.publish("edgeloop_late", "x")
        assert got.wait(5)
    finally:
        bus.stop()
