"""Leases on PostgreSQL under real concurrency: threads and processes racing, fencing, release."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlmodel import Session

from fleet_server.coordination.leases import LeaseGrant, LeaseLost, LeaseStore, Singleton
from fleet_server.models import utcnow

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[3]


def run_together(commands: list[list[str]], timeout: float = 60) -> list[str]:
    """Start one `_child` process per command, wait until all say "ready", release them at once,
    and return each one's stdout (the test fails if any exits non-zero)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.integration.coordination._child", *cmd],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for cmd in commands
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = [proc.communicate(timeout=timeout) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
    return [out.strip() for out, _ in results]


def test_threads_racing_for_a_lease_exactly_one_wins(pg_engine: Engine) -> None:
    store = LeaseStore(pg_engine)
    for round_ in range(10):
        barrier = threading.Barrier(8)

        def claim(
            i: int, name: str = f"job-{round_}", barrier: threading.Barrier = barrier
        ) -> LeaseGrant | None:
            barrier.wait()
            return store.try_acquire(name, f"r{i}", 30)

        with ThreadPoolExecutor(8) as pool:
            grants = [g for g in pool.map(claim, range(8)) if g is not None]
        assert len(grants) == 1 and grants[0].token == 1


def test_processes_racing_for_a_lease_exactly_one_wins(pg_engine: Engine) -> None:
    url = pg_engine.url.render_as_string(hide_password=False)
    outputs = run_together([["race", url, "job", f"p{i}"] for i in range(4)])
    assert sorted(outputs) == ["lost", "lost", "lost", "won 1"]
    current = LeaseStore(pg_engine).current("job")
    assert current is not None and f"won {current.token}" in outputs
    assert outputs[int(current.holder[1:])] == "won 1"


def test_a_fenced_out_holder_writes_nothing(pg_engine: Engine) -> None:
    clock_a = [utcnow()]
    a_store = LeaseStore(pg_engine, clock=lambda: clock_a[0])
    b_store = LeaseStore(pg_engine, clock=lambda: clock_a[0] + _s(10))  # B sees A's lease expired
    with pg_engine.begin() as conn:
        conn.execute(text("CREATE TABLE fenced (writer text)"))
    a = a_store.try_acquire("job", "a", 6)
    assert a is not None
    b = b_store.try_acquire("job", "b", 6)
    assert b is not None and b.token == a.token + 1
    with Session(pg_engine) as session, pytest.raises(LeaseLost):
        session.connection().execute(text("INSERT INTO fenced VALUES ('a-before-guard')"))
        a_store.guard(session, a)
        session.commit()  # never reached
    with Session(pg_engine) as session:
        b_store.guard(session, b)
        session.connection().execute(text("INSERT INTO fenced VALUES ('b')"))
        session.commit()
    with pg_engine.connect() as conn:
        assert conn.execute(text("SELECT writer FROM fenced")).scalars().all() == ["b"]


def test_no_takeover_commits_between_a_guard_and_the_holders_commit(pg_engine: Engine) -> None:
    now = utcnow()
    a_store = LeaseStore(pg_engine, clock=lambda: now)
    b_store = LeaseStore(pg_engine, clock=lambda: now + _s(10))
    a = a_store.try_acquire("job", "a", 6)
    assert a is not None
    with Session(pg_engine) as session, ThreadPoolExecutor(1) as pool:
        a_store.guard(session, a)  # share-locks the lease row
        claim = pool.submit(b_store.try_acquire, "job", "b", 6)
        _wait_for_lock_wait(pg_engine)
        assert not claim.done()
        session.commit()
        b = claim.result(timeout=10)
    assert b is not None and b.token == a.token + 1


def test_release_lets_another_replica_claim_at_once(pg_engine: Engine) -> None:
    store = LeaseStore(pg_engine)
    a = store.try_acquire("job", "a", 3600)
    assert a is not None and store.try_acquire("job", "b", 3600) is None
    store.release(a)
    b = store.try_acquire("job", "b", 3600)
    assert b is not None and b.token == a.token + 1


def _s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


def _wait_for_lock_wait(engine: Engine) -> None:
    deadline = time.monotonic() + 10
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
            if waiting:
                return
            conn.rollback()  # pg_stat_activity is a snapshot per transaction
            time.sleep(0.02)
    raise AssertionError("the second claimer never waited on the lease row")


def test_a_singleton_whose_row_is_stolen_calls_on_lost(pg_engine: Engine) -> None:
    lost, acquired = threading.Event(), threading.Event()
    single = Singleton(LeaseStore(pg_engine), "job", "a", ttl_s=1.5, poll_s=0.1,
                       on_acquired=lambda _: acquired.set(), on_lost=lost.set)  # fmt: skip
    single.start()
    try:
        assert acquired.wait(10)
        with pg_engine.begin() as conn:
            conn.execute(
                text("UPDATE coordination_lease SET holder = 'thief', token = token + 1 WHERE name = 'job'")
            )
        assert lost.wait(10)
        assert single.grant is None
    finally:
        single.stop()
