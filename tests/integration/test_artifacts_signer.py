"""The TUF signer across replicas on one store and database: the timestamp refresh runs only on
the `tuf-signer` lease holder and moves to another replica when the holder stops renewing; on
PostgreSQL the repository writers of two replicas are serialized by the advisory lock."""

from __future__ import annotations

import shutil
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from fleet_server.coordination.leases import LeaseStore
from fleet_server.db import make_engine
from fleet_server.migrate import upgrade
from fleet_server.ota.releases import OtaService
from fleet_server.ota.repository import Expiry
from fleet_server.ota.signer import PgAdvisoryLock, TimestampDuty, coordinate


def _engine(tmp_path: Path, database_url: str) -> Engine:
    engine = make_engine(database_url or f"sqlite:///{tmp_path / 'db.sqlite'}")
    upgrade(engine)
    return engine


def _pair(tmp_path: Path, expiry: Expiry | None = None) -> tuple[OtaService, OtaService]:
    a = OtaService(tmp_path / "a", expiry=expiry)
    shutil.copytree(tmp_path / "a" / "keys", tmp_path / "b" / "keys")
    return a, OtaService(tmp_path / "b", expiry=expiry, store=a.store)


def _until(cond: object, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if cond():  # type: ignore[operator]
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_timestamp_refresh_runs_on_the_lease_holder_and_moves_on_takeover(
    tmp_path: Path, database_url: str
) -> None:
    engine = _engine(tmp_path, database_url)
    a, b = _pair(tmp_path, Expiry(timestamp=timedelta(seconds=4)))
    duties = {
        name: TimestampDuty(svc, LeaseStore(engine), name, ttl_s=2.0, poll_s=0.2, interval_s=0.2)
        for name, svc in (("a", a), ("b", b))
    }
    duties["a"].start()
    _until(lambda: duties["a"].held, 10)
    duties["b"].start()
    try:
        time.sleep(0.5)
        assert not duties["b"].held
        v0 = a.repo.timestamp().version
        _until(lambda: a.repo.timestamp().version > v0, 10)  # re-signed at half its 4 s lifetime
        # a freezes: no renewals, no refreshes (as a SIGKILLed replica), and never releases
        duties["a"].singleton._stop.set()
        duties["a"]._stop.set()
        duties["a"]._wake.set()
        taken = _until(lambda: duties["b"].held, 10)
        assert taken <= 2.0 + 0.2 + 2.0  # ttl + poll + slack for a loaded box
        v1 = b.repo.timestamp().version
        _until(lambda: b.repo.timestamp().version > v1, 10)  # b keeps the repository fresh
    finally:
        duties["b"].stop()
        duties["a"].singleton._grant = None  # frozen: it must not release b's lease on cleanup
        duties["a"].stop()
        engine.dispose()


@pytest.mark.postgres
def test_advisory_lock_serializes_replica_writers(tmp_path: Path) -> None:
    from tests.conftest import drop_pg_database, make_pg_database

    name, url = make_pg_database()
    engine = _engine(tmp_path, url)
    try:
        a, b = _pair(tmp_path)
        duty_a = coordinate(a, engine, holder="a", interval_s=60)
        duty_b = coordinate(b, engine, holder="b", interval_s=60)
        assert isinstance(a.repo.lock, PgAdvisoryLock) and isinstance(b.repo.lock, PgAdvisoryLock)
        inside: list[str] = []
        overlap: list[bool] = []

        def hold(who: str, lock: PgAdvisoryLock) -> None:
            with lock:
                overlap.append(bool(inside))
                inside.append(who)
                time.sleep(0.3)
                inside.remove(who)

        threads = [
            threading.Thread(target=hold, args=(w, s.repo.lock))
            for w, s in (("a", a), ("b", b))
            for _ in range(3)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert overlap == [False] * 6  # never two writers inside at once, across the two replicas
        # and repository writes through both replicas still commit one after the other
        doc = tmp_path / "d.json"
        doc.write_text("{}")
        writers = [
            threading.Thread(
                target=lambda s=s, i=i: s.repo.set_targets([s.repo.add_target_file(f"m/{i}.json", doc)])
            )
            for i, s in enumerate([a, b, a, b])
        ]
        for t in writers:
            t.start()
        for t in writers:
            t.join(60)
        assert {f"m/{i}.json" for i in range(4)} <= set(b.repo.release_targets())
        duty_a.stop()
        duty_b.stop()
    finally:
        engine.dispose()
        drop_pg_database(name)
