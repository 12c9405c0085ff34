"""Singleton on SQLite with short TTLs: acquire, lose on a stolen row, release on stop, wait its turn."""

from __future__ import annotations

import threading

from sqlalchemy import Engine, update

from fleet_server.coordination.leases import LeaseGrant, LeaseStore, Singleton
from fleet_server.coordination.models import CoordinationLease

_T = CoordinationLease.__table__  # type: ignore[attr-defined]


class Job:
    def __init__(self) -> None:
        self.acquired = threading.Event()
        self.lost = threading.Event()
        self.grants: list[LeaseGrant] = []

    def on_acquired(self, grant: LeaseGrant) -> None:
        self.grants.append(grant)
        self.acquired.set()

    def on_lost(self) -> None:
        self.lost.set()


def _singleton(engine: Engine, holder: str, job: Job, ttl_s: float = 1.5) -> Singleton:
    return Singleton(LeaseStore(engine), "job", holder, ttl_s=ttl_s, poll_s=0.1,
                     on_acquired=job.on_acquired, on_lost=job.on_lost)  # fmt: skip


def test_acquires_and_keeps_the_lease_past_its_ttl(sqlite_engine: Engine) -> None:
    job = Job()
    single = _singleton(sqlite_engine, "a", job, ttl_s=0.6)
    single.start()
    try:
        assert job.acquired.wait(5)
        assert not job.lost.wait(1.5)  # renewed every ttl/3
        assert single.grant is not None and single.grant.token == job.grants[0].token
    finally:
        single.stop()
    assert job.lost.is_set() and single.grant is None  # stop tells the job to stop


def test_on_lost_fires_when_the_row_is_stolen_and_it_claims_again_later(sqlite_engine: Engine) -> None:
    job = Job()
    single = _singleton(sqlite_engine, "a", job, ttl_s=0.6)
    single.start()
    try:
        assert job.acquired.wait(5)
        job.acquired.clear()
        with sqlite_engine.begin() as conn:
            conn.execute(update(_T).where(_T.c.name == "job").values(holder="thief", token=_T.c.token + 1))
        assert job.lost.wait(5)
        assert single.grant is None
        assert job.acquired.wait(5)  # the thief never renews: its lease expires and "a" takes it back
        assert job.grants[-1].token > job.grants[0].token + 1
    finally:
        single.stop()


def test_a_second_singleton_waits_and_takes_over_at_once_after_stop(sqlite_engine: Engine) -> None:
    first, second = Job(), Job()
    a = _singleton(sqlite_engine, "a", first, ttl_s=60)
    b = _singleton(sqlite_engine, "b", second, ttl_s=60)
    a.start()
    assert first.acquired.wait(5)
    b.start()
    try:
        assert not second.acquired.wait(0.5)
        a.stop()  # releases: b need not wait the 60 s ttl
        assert second.acquired.wait(5)
        assert second.grants[0].token == first.grants[0].token + 1
    finally:
        b.stop()
