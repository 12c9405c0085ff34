"""Batched persistence of device reports and telemetry (group commit).

Sync handlers submit rows with a completion callback; one writer task drains everything pending into a
single transaction per flush (Core `executemany`, never one ORM commit per message — see
shared/research/transport.md: ~4k rows/s per-row ORM vs ~230k rows/s batched). Acks go out only
after the commit, which is what makes store-and-forward delivery exactly-once together with the
(device_id, seq) unique key.

One device never fails the others: records are range-checked one by one before they get here
(grpc_api/codec.py; refusals are counted with `count_rejected`), and if a flush still fails for
a reason other than the database being unreachable, the batch is retried split by device
(bisection, each part in its own transaction) and then, for a device that fails alone, split by
row, so only the rows that fail are refused (`RowsRefusedError` names them; the device's other
rows commit). Everyone is acked in the same flush cycle, and a device is never left resending a
record that can never be stored. A database that is down (`StorageUnavailableError`) fails the
whole batch once, without per-device retries.

Does not decide what a message means (device_session.py) or how rows look to the API (crud/).
The rows, hooks and outcome errors live in ingest_rows.py and the SQL statements, parameters and
database-error classification in ingest_sql.py; every public name is re-exported here, so
`fleet_server.ingest` stays the one import path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.expression import Insert
from sqlmodel import SQLModel

from fleet_server.ingest_rows import (
    Done,
    FlushHook,
    ReportObserver,
    ReportRow,
    RowsFailedError,
    RowsRefusedError,
    StorageUnavailableError,
    TelemetryObserver,
    TelemetryRow,
)
from fleet_server.ingest_sql import (
    _REPORT_UPDATE,
    _describe,
    _report_params,
    _storage_down,
    _telemetry_params,
)
from fleet_server.logsafe import text as safe_text
from fleet_server.models import TelemetryRecord, utcnow
from fleet_server.observability.logs import log_context

__all__ = [
    "MAX_DEVICE_COUNTERS",
    "MAX_ROW_BISECT",
    "OTHER_DEVICES",
    "Done",
    "FlushHook",
    "IngestStats",
    "IngestWriter",
    "ReportObserver",
    "ReportRow",
    "RowsFailedError",
    "RowsRefusedError",
    "StorageUnavailableError",
    "TelemetryObserver",
    "TelemetryRow",
]

logger = logging.getLogger(__name__)


MAX_ROW_BISECT = 256
"""Rows of one failing device that are isolated one by one; beyond this, `RowsFailedError`."""


MAX_DEVICE_COUNTERS = 256
"""Per-device rejection counters kept in memory; beyond this, counted under OTHER_DEVICES."""
OTHER_DEVICES = "(other devices)"


@dataclass
class _Pending:
    reports: dict[str, ReportRow] = field(default_factory=dict)
    telemetry: list[tuple[str, TelemetryRow]] = field(default_factory=list)
    callbacks: list[tuple[str, Done]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.reports) + len(self.telemetry)

    def devices(self) -> list[str]:
        return sorted({d for d, _ in self.callbacks} | set(self.reports) | {d for d, _ in self.telemetry})

    def only(self, devices: set[str]) -> _Pending:
        return _Pending(
            reports={d: r for d, r in self.reports.items() if d in devices},
            telemetry=[(d, r) for d, r in self.telemetry if d in devices],
            callbacks=[(d, c) for d, c in self.callbacks if d in devices],
        )


@dataclass
class IngestStats:
    """Served as `ingest` in /healthz."""

    flushes: int = 0
    reports: int = 0
    telemetry_rows: int = 0
    errors: int = 0
    last_flush_s: float = 0.0
    isolated_flushes: int = 0  # flushes that failed whole and were retried split by device
    device_failures: int = 0  # devices whose rows failed alone in such a retry
    rejected_records: int = 0  # records refused one by one before batching (never stored)
    rejected_reasons: dict[str, int] = field(default_factory=dict)
    rejected_by_device: dict[str, int] = field(default_factory=dict)
    nonfinite_metrics_dropped: int = 0


class IngestWriter:
    """Group-commit writer. `start()` on the serving loop, `stop()` flushes what is pending."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_rows: int = 2000,
        linger_s: float = 0.0,
        observers: Sequence[TelemetryObserver] = (),
        report_observers: Sequence[ReportObserver] = (),
    ) -> None:
        self._engine = engine
        self._observers = tuple(observers)
        self._report_observers = tuple(report_observers)
        self._max_rows = max_rows
        self._linger_s = linger_s
        self._pending = _Pending()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.stats = IngestStats()
        self.on_flush: FlushHook | None = None
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

    @property
    def queue_depth(self) -> int:
        """Rows submitted and not yet taken by a flush (/metrics)."""
        return len(self._pending)

    def submit_report(self, row: ReportRow, done: Done) -> None:
        """Queue a report (latest per device wins within a flush); `done` runs after commit."""
        self._pending.reports[row.device_id] = row
        self._add(row.device_id, done)

    def submit_telemetry(self, device_id: str, rows: list[TelemetryRow], done: Done) -> None:
        self._pending.telemetry.extend((device_id, r) for r in rows)
        self._add(device_id, done)

    def count_rejected(self, device_id: str, reason: str, n: int = 1) -> None:
        """Count records refused before batching (per reason and per device, memory-bounded)."""
        s = self.stats
        s.rejected_records += n
        key = device_id
        if key not in s.rejected_by_device and len(s.rejected_by_device) >= MAX_DEVICE_COUNTERS:
            key = OTHER_DEVICES
        # Copy on write: /healthz serializes these dicts from a worker thread.
        s.rejected_reasons = {**s.rejected_reasons, reason: s.rejected_reasons.get(reason, 0) + n}
        s.rejected_by_device = {**s.rejected_by_device, key: s.rejected_by_device.get(key, 0) + n}

    def _add(self, device_id: str, done: Done) -> None:
        if self._closing:
            raise RuntimeError("ingest writer is stopping")
        self._pending.callbacks.append((device_id, done))
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._linger_s and len(self._pending) < self._max_rows and not self._closing:
                await asyncio.sleep(self._linger_s)
            batch, self._pending = self._pending, _Pending()
            if batch.callbacks:
                started = time.perf_counter()
                await self._flush(batch)
                if self.on_flush is not None:
                    self.on_flush(time.perf_counter() - started, len(batch))
            if self._closing and not self._pending.callbacks:
                return

    async def _flush(self, batch: _Pending) -> None:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        committed: set[str] = set()
        notified: set[str] = set()

        def release(devices: list[str]) -> None:
            """From the writer thread, during a split retry: ack these devices now, so a slow
            retry of one device never holds back the others' acks."""
            committed.update(devices)
            loop.call_soon_threadsafe(self._notify, batch, lambda d: None, set(devices), notified)

        try:
            failed = await asyncio.to_thread(self._commit, batch, committed, release, True)
        except Exception as err:
            self.stats.errors += 1
            logger.error("ingest flush failed: storage unavailable rows=%d: %s", len(batch), _describe(err))
            down = StorageUnavailableError("storage unavailable")
            self._notify(batch, lambda d: None if d in committed else down, None, notified)
            return
        if failed:
            self.stats.errors += 1
        self.stats.flushes += 1
        self.stats.reports += sum(1 for d in batch.reports if d in committed)
        self.stats.telemetry_rows += sum(1 for d, _ in batch.telemetry if d in committed)
        self.stats.last_flush_s = time.perf_counter() - started
        self._notify(batch, failed.get, None, notified)

    def _commit(
        self, batch: _Pending, committed: set[str], release: Callable[[list[str]], None], top: bool
    ) -> dict[str, BaseException]:
        """Write `batch`; on a failure that is not the database being down, bisect by device.

        Adds every device whose rows committed to `committed` (and `release`s it at once inside a
        split retry); returns the devices that failed alone with their error.
        Raises: the database error when storage is unavailable.
        """
        devices = batch.devices()
        stored = committed.update if top else release  # top level: acked after the flush, as usual
        try:
            self._write(batch)
        except Exception as err:
            if _storage_down(err):
                raise
            if len(devices) <= 1:
                if len(batch.telemetry) > MAX_ROW_BISECT:
                    self.stats.device_failures += 1
                    return dict.fromkeys(
                        devices, RowsFailedError(f"records could not be stored: {_describe(err)}")
                    )
                refused = self._isolate_rows(batch, _describe(err))
                if refused is None:  # every row stored when retried on its own
                    stored(devices)
                    return {}
                self.stats.device_failures += 1
                with log_context(device_id=devices[0] if devices else None):
                    logger.warning(
                        "ingest rows refused device_id=%s records=%d report=%s: %s",
                        safe_text(devices[0] if devices else ""),
                        len(refused.seqs),
                        bool(refused.report),
                        refused,
                    )
                return dict.fromkeys(devices, refused)
            if top:
                self.stats.isolated_flushes += 1
                logger.warning(
                    "ingest flush failed for %d devices; retrying split by device: %s",
                    len(devices),
                    _describe(err),
                )
            half = len(devices) // 2
            failed: dict[str, BaseException] = {}
            for part in (devices[:half], devices[half:]):
                failed.update(self._commit(batch.only(set(part)), committed, release, False))
            return failed
        stored(devices)
        return {}

    def _isolate_rows(self, batch: _Pending, detail: str) -> RowsRefusedError | None:
        """One device's batch failed: store what can be stored, row by row (bisection)."""
        rows = batch.telemetry
        refused: dict[int, str] = {}
        if rows:
            self._bisect_rows(rows, refused)
        report = ""
        if batch.reports:
            try:
                self._write(_Pending(reports=batch.reports))
            except Exception as err:
                if _storage_down(err):
                    raise
                report = _describe(err)
        if not refused and not report:
            return None
        return RowsRefusedError(detail, seqs=refused, report=report)

    def _bisect_rows(self, rows: list[tuple[str, TelemetryRow]], refused: dict[int, str]) -> None:
        try:
            self._write(_Pending(telemetry=rows))
        except Exception as err:
            if _storage_down(err):
                raise
            if len(rows) == 1:
                refused[rows[0][1].seq] = _describe(err)
                return
            half = len(rows) // 2
            self._bisect_rows(rows[:half], refused)
            self._bisect_rows(rows[half:], refused)

    @staticmethod
    def _notify(
        batch: _Pending,
        error_for: Callable[[str], BaseException | None],
        only: set[str] | None,
        notified: set[str],
    ) -> None:
        """Run the callbacks of `only` (None: every device) not yet notified in this flush."""
        for device_id, done in batch.callbacks:
            if device_id in notified or (only is not None and device_id not in only):
                continue
            try:
                done(error_for(device_id))
            except Exception:
                logger.exception("ingest completion callback failed")
        notified.update(only if only is not None else batch.devices())

    def _write(self, batch: _Pending) -> None:
        now = utcnow()
        with self._engine.begin() as conn:
            if batch.telemetry:
                conn.execute(self._insert, [_telemetry_params(dev, row, now) for dev, row in batch.telemetry])
                for observer in self._observers:
                    observer(conn, batch.telemetry)
            if batch.reports:
                rejected = self.stats.rejected_by_device
                conn.execute(
                    _REPORT_UPDATE,
                    [_report_params(r, now, rejected.get(r.device_id, 0)) for r in batch.reports.values()],
                )
                reports = list(batch.reports.values())
                for report_observer in self._report_observers:
                    report_observer(conn, reports)
