"""DeviceLookup (grpc_api/auth.py): the device reads behind stream authentication, batched so a
reconnect storm of thousands of streams costs a few queries instead of one per stream."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import Engine, event
from sqlmodel import Session

from fleet_server.db import make_engine
from fleet_server.grpc_api.auth import DeviceLookup
from fleet_server.migrate import upgrade
from fleet_server.models import Device, utcnow


def _engine(tmp_path: Path, n: int) -> Engine:
    engine = make_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    upgrade(engine)
    with Session(engine) as s:
        s.add_all(
            Device(id=f"d{i:04d}", profile="generic-x86", labels={"i": str(i)}, enrolled_at=utcnow())
            for i in range(n)
        )
        s.commit()
    return engine


def _count_device_selects(engine: Engine) -> list[str]:
    seen: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM device" in statement:
            seen.append(statement)

    return seen


def test_concurrent_lookups_share_one_query(tmp_path: Path) -> None:
    engine = _engine(tmp_path, 300)
    selects = _count_device_selects(engine)
    lookup = DeviceLookup(engine)

    async def storm() -> list[Device | None]:
        ids = [f"d{i:04d}" for i in range(300)] + ["d0007", "missing"]
        return await asyncio.gather(*(lookup.get(i) for i in ids))

    found = asyncio.run(storm())
    assert [d.id if d else None for d in found[:300]] == [f"d{i:04d}" for i in range(300)]
    assert found[42] is not None and found[42].labels == {"i": "42"}  # loaded, usable detached
    assert found[300] is not None and found[300].id == "d0007"  # the same id twice: both answered
    assert found[301] is None  # not enrolled
    assert len(selects) == 1 and lookup.queries == 1  # one query for 302 concurrent streams
    engine.dispose()


def test_batches_are_bounded_and_later_lookups_read_fresh_rows(tmp_path: Path) -> None:
    engine = _engine(tmp_path, 50)
    lookup = DeviceLookup(engine, max_batch=20)

    async def run() -> tuple[list[Device | None], Device | None]:
        first = await asyncio.gather(*(lookup.get(f"d{i:04d}") for i in range(50)))
        with Session(engine) as s:
            row = s.get(Device, "d0003")
            assert row is not None
            row.status = "revoked"
            s.add(row)
            s.commit()
        return first, await lookup.get("d0003")

    first, again = asyncio.run(run())
    assert all(d is not None for d in first)
    assert lookup.queries == 4  # 20 + 20 + 10, then the fresh read
    assert again is not None and again.status == "revoked"  # nothing cached across batches
    engine.dispose()


def test_a_waiter_that_went_away_does_not_break_the_batch(tmp_path: Path) -> None:
    engine = _engine(tmp_path, 10)
    lookup = DeviceLookup(engine)

    async def run() -> list[Device | None]:
        gone = asyncio.ensure_future(lookup.get("d0001"))
        others = [asyncio.ensure_future(lookup.get(f"d{i:04d}")) for i in range(10)]
        await asyncio.sleep(0)
        gone.cancel()  # the stream closed while its lookup was queued
        return await asyncio.gather(*others)

    assert [d.id if d else None for d in asyncio.run(run())] == [f"d{i:04d}" for i in range(10)]
    engine.dispose()
