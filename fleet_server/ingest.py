"""Batched persistence of device reports and telemetry (group commit).

Sync handlers submit rows with a completion callback; one writer task drains everything pending into a
single transaction per flush (Core `executemany`, never one ORM commit per message — see
shared/research/transport.md: ~4k rows/s per-row ORM vs ~230k rows/s batched). Acks go out only
after the commit, which is what makes store-and-forward delivery exactly-once together with the
(device_id, seq) unique key.

Does not decide what a message means (grpc_api/servicer.py) or how rows look to the API (crud/).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, func, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.expression import Insert
from sqlmodel import SQLModel

from fleet_server.models import Device, TelemetryRecord, utcnow

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportRow:
    device_id: str
    agent_version: str
    observed: dict[str, Any]
    telemetry_dropped_total: int


@dataclass(frozen=True)
class TelemetryRow:
    seq: int
    timestamp_ms: int
    kind: str
    metrics: dict[str, float]
    payload: bytes


TelemetryObserver = Callable[[Connection, list[tuple[str, TelemetryRow]]], None]
"""Runs inside the flush transaction with every telemetry row of the batch (device_id, row).

Domain modules (drift, inference stats) register one to derive their own tables from the same
exactly-once stream; an exception rolls back the whole flush, so nothing is acked half-derived.
Observers must be idempotent per (device_id, seq): a record may be seen again after a lost ack.
"""


Done = Callable[[BaseException | None], None]
"""Called on the serving loop after the flush holding the row: None on commit, else the error.
Called directly (no future, no extra loop iteration): this runs once per device message."""


@dataclass
class _Pending:
    reports: dict[str, ReportRow] = field(default_factory=dict)
    telemetry: list[tuple[str, TelemetryRow]] = field(default_factory=list)
    callbacks: list[Done] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.reports) + len(self.telemetry)


@dataclass
class IngestStats:
    flushes: int = 0
    reports: int = 0
    telemetry_rows: int = 0
    errors: int = 0
    last_flush_s: float = 0.0


class IngestWriter:
    """Group-commit writer. `start()` on the serving loop, `stop()` flushes what is pending."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_rows: int = 2000,
        linger_s: float = 0.0,
        observers: Sequence[TelemetryObserver] = (),
    ) -> None:
        self._engine = engine
        self._observers = tuple(observers)
        self._max_rows = max_rows
        self._linger_s = linger_s
        self._pending = _Pending()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.stats = IngestStats()
        self._insert = self._build_insert()

    def _build_insert(self) -> Insert:
        table = SQLModel.metadata.tables[TelemetryRecord.__tablename__]
        dialect = self._engine.dialect.name
        if dialect == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing(index_elements=["device_id", "seq"])
        if dialect == "sqlite":
            return sqlite.insert(table).on_conflict_do_nothing(index_elements=["device_id", "seq"])
        raise RuntimeError(f"unsupported database dialect {dialect}")

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ingest-writer")

    async def stop(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

    def submit_report(self, row: ReportRow, done: Done) -> None:
        """Queue a report (latest per device wins within a flush); `done` runs after commit."""
        self._pending.reports[row.device_id] = row
        self._add(done)

    def submit_telemetry(self, device_id: str, rows: list[TelemetryRow], done: Done) -> None:
        self._pending.telemetry.extend((device_id, r) for r in rows)
        self._add(done)

    def _add(self, done: Done) -> None:
        if self._closing:
            raise RuntimeError("ingest writer is stopping")
        self._pending.callbacks.append(done)
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._linger_s and len(self._pending) < self._max_rows and not self._closing:
                await asyncio.sleep(self._linger_s)
            batch, self._pending = self._pending, _Pending()
            if batch.callbacks:
                await self._flush(batch)
            if self._closing and not self._pending.callbacks:
                return

    async def _flush(self, batch: _Pending) -> None:
        started = time.perf_counter()
        try:
            await asyncio.to_thread(self._write, batch)
        except Exception as err:
            self.stats.errors += 1
            logger.exception("ingest flush failed rows=%d", len(batch))
            self._notify(batch, err)
            return
        self.stats.flushes += 1
        self.stats.reports += len(batch.reports)
        self.stats.telemetry_rows += len(batch.telemetry)
        self.stats.last_flush_s = time.perf_counter() - started
        self._notify(batch, None)

    @staticmethod
    def _notify(batch: _Pending, err: BaseException | None) -> None:
        for done in batch.callbacks:
            try:
                done(err)
            except Exception:
                logger.exception("ingest completion callback failed")

    def _write(self, batch: _Pending) -> None:
        now = utcnow()
        with self._engine.begin() as conn:
            if batch.telemetry:
                conn.execute(self._insert, [_telemetry_params(dev, row, now) for dev, row in batch.telemetry])
                for observer in self._observers:
                    observer(conn, batch.telemetry)
            if batch.reports:
                conn.execute(_REPORT_UPDATE, [_report_params(r, now) for r in batch.reports.values()])


_device = SQLModel.metadata.tables[Device.__tablename__]
_REPORT_UPDATE = (
    update(_device)
    .where(_device.c.id == bindparam("b_id"))
    .values(
        last_seen_at=bindparam("b_now"),
        first_seen_at=func.coalesce(_device.c.first_seen_at, bindparam("b_now")),
        agent_version=bindparam("b_agent_version"),
        observed=bindparam("b_observed"),
        telemetry_dropped_total=bindparam("b_dropped"),
    )
)


def _report_params(row: ReportRow, now: datetime) -> dict[str, Any]:
    return {
        "b_id": row.device_id,
        "b_now": now,
        "b_agent_version": row.agent_version,
        "b_observed": row.observed,
        "b_dropped": row.telemetry_dropped_total,
    }


def _telemetry_params(device_id: str, row: TelemetryRow, now: datetime) -> dict[str, Any]:
    return {
        "device_id": device_id,
        "seq": row.seq,
        "timestamp_ms": row.timestamp_ms,
        "kind": row.kind,
        "metrics": row.metrics,
        "payload": row.payload,
        "received_at": now,
    }
