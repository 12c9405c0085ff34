"""The two singletons H1a wires: the audit head signer's timer and the daily CRL refresh each run on
the lease holder only, and move to the other replica when the holder stops (SQLite, short TTLs)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine

from fleet_server.audit.chain import Actor
from fleet_server.audit.wiring import build_audit
from fleet_server.certs.wiring import build_cert_lifecycle
from fleet_server.coordination.leases import LeaseStore
from fleet_server.pki import FleetCA
from fleet_server.settings import Settings


def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_only_the_lease_holder_signs_the_audit_head_on_its_timer(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    leases = LeaseStore(sqlite_engine)
    a = build_audit(engine=sqlite_engine, data_dir=tmp_path, interval_s=0.1, leases=leases, holder="a",
                    lease_ttl_s=1.5)  # fmt: skip
    assert _until(lambda: a.timed_signs > 0)
    b = build_audit(engine=sqlite_engine, data_dir=tmp_path, interval_s=0.1, leases=leases, holder="b",
                    lease_ttl_s=1.5)  # fmt: skip
    try:
        a.log.record(Actor.system("test"), "something")
        assert _until(lambda: len(a.log.signatures()) == 1)
        time.sleep(0.5)
        assert b.timed_signs == 0
        a.stop()  # signs once more at stop (nothing new here) and releases the lease
        assert _until(lambda: b.timed_signs > 0)
        b.log.record(Actor.system("test"), "after takeover")
        assert _until(lambda: len(b.log.signatures()) == 2)
    finally:
        b.stop()


def test_only_the_lease_holder_refreshes_the_crl(sqlite_engine: Engine, tmp_path: Path) -> None:
    ca = FleetCA.create(tmp_path / "pki")
    leases = LeaseStore(sqlite_engine)

    class _Settings(Settings):
        mqtt_crl_file: Path | None = None
        mqtt_broker_reload: str = ""

    settings = _Settings(data_dir=tmp_path / "srv", mqtt_crl_file=tmp_path / "crl.pem", lease_ttl_s=1.5)

    async def scenario() -> None:
        a = build_cert_lifecycle(
            engine=sqlite_engine, ca=ca, settings=settings, audit=None, leases=leases, holder="a"
        )
        b = build_cert_lifecycle(
            engine=sqlite_engine, ca=ca, settings=settings, audit=None, leases=leases, holder="b"
        )
        a.start()
        assert await _async_until(lambda: a.refreshing)
        b.start()
        await asyncio.sleep(1.0)
        assert not b.refreshing
        assert (tmp_path / "crl.pem").exists()
        a.stop()
        assert not a.refreshing
        assert await _async_until(lambda: b.refreshing)
        b.stop()

    asyncio.run(scenario())


async def _async_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return False
