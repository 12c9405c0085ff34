"""PgBus on a real PostgreSQL: cross-process and cross-thread delivery, reconnect after the
listener's backend is terminated (on_reconnect runs, delivery resumes), the payload limit."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time

import psycopg
import pytest
from sqlalchemy import Engine

from fleet_server.coordination.bus import (
    MAX_PAYLOAD_BYTES,
    PayloadTooLarge,
    PgBus,
    build_bus,
    libpq_url,
    notify_in,
)
from tests.integration.coordination.test_leases_pg import ROOT

pytestmark = pytest.mark.postgres


def test_publish_reaches_a_listener_in_another_process_within_a_second(pg_engine: Engine) -> None:
    url = pg_engine.url.render_as_string(hide_password=False)
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.coordination._child", "listen", url, "edgeloop_desired"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    bus = PgBus(pg_engine)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        latencies = []
        for i in range(5):
            sent = time.monotonic()
            bus.publish("edgeloop_desired", f"device-{i}")
            assert child.stdout.readline().strip() == f"device-{i}"
            latencies.append(time.monotonic() - sent)
        print(f"\nPgBus cross-process latency: max {max(latencies) * 1000:.1f} ms over {len(latencies)}")
        assert max(latencies) < 1.0
    finally:
        child.kill()
        child.wait()


def test_listener_reconnects_after_its_backend_is_terminated(pg_engine: Engine) -> None:
    bus = PgBus(pg_engine, poll_s=0.2)
    got: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
    resynced = threading.Event()
    bus.subscribe("edgeloop_kick", lambda p: got.put((p, threading.current_thread().name)))
    bus.subscribe("edgeloop_fl", lambda p: got.put(("fl:" + p, "")))
    bus.on_reconnect(resynced.set)
    bus.start()
    try:
        assert bus.connected.wait(10)
        bus.publish("edgeloop_kick", "before")
        assert got.get(timeout=5) == ("before", "bus-pg")
        old_pid = bus.backend_pid()
        with psycopg.connect(libpq_url(pg_engine), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (old_pid,))
        assert resynced.wait(10), "on_reconnect handlers did not run"
        assert bus.reconnects == 1 and bus.backend_pid() not in (None, old_pid)
        bus.publish("edgeloop_fl", "after")  # every channel is listened to again
        assert got.get(timeout=5) == ("fl:after", "")
    finally:
        bus.stop()
    assert not bus.connected.is_set()


def test_payload_over_the_limit_is_refused_before_postgres_sees_it(pg_engine: Engine) -> None:
    bus = build_bus(pg_engine)
    assert isinstance(bus, PgBus)
    bus.publish("edgeloop_ota", "x" * MAX_PAYLOAD_BYTES)  # at the limit: PostgreSQL takes it
    with pytest.raises(PayloadTooLarge):
        bus.publish("edgeloop_ota", "x" * (MAX_PAYLOAD_BYTES + 1))


def test_a_subscription_made_after_start_receives_what_is_published_after_it_returns(
    pg_engine: Engine,
) -> None:
    bus = PgBus(pg_engine)
    got: queue.SimpleQueue[str] = queue.SimpleQueue()
    bus.start()
    try:
        assert bus.connected.wait(10)
        bus.subscribe("edgeloop_late", got.put)
        bus.publish("edgeloop_late", "hello")
        assert got.get(timeout=5) == "hello"
    finally:
        bus.stop()


def test_notify_in_a_transaction_is_delivered_only_when_it_commits(pg_engine: Engine) -> None:
    bus = PgBus(pg_engine)
    got: queue.SimpleQueue[str] = queue.SimpleQueue()
    bus.subscribe("edgeloop_desired", got.put)
    bus.start()
    try:
        assert bus.connected.wait(10)
        with pg_engine.connect() as conn:
            notify_in(conn, "edgeloop_desired", "rolled-back")
            conn.rollback()
        with pg_engine.begin() as conn:
            notify_in(conn, "edgeloop_desired", "committed")
        assert got.get(timeout=5) == "committed"
        bus.publish("edgeloop_desired", "marker")
        assert got.get(timeout=5) == "marker"  # nothing from the rolled-back transaction in between
    finally:
        bus.stop()
