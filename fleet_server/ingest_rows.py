"""What the ingest writer takes and gives back: the rows, the hooks and the outcomes.

Owns the row shapes a device's messages are decoded into (`ReportRow`, `TelemetryRow`; the decoding
is grpc_api/codec.py's), the hooks that run inside or after a flush (`TelemetryObserver`,
`ReportObserver`, `Done`, `FlushHook`) and the errors a submitter's `Done` may receive
(`StorageUnavailableError`, `RowsRefusedError`, `RowsFailedError`).

Does not write, batch or retry anything (ingest.py does; it re-exports every name here, so
`fleet_server.ingest` stays the import path callers use) and opens no database connection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection


@dataclass(frozen=True)
class ReportRow:
    device_id: str
    agent_version: str
    observed: dict[str, Any]
    telemetry_dropped_total: int
    transport: str  # "grpc" | "mqtt": written to Device.transport
    cert_fingerprint: str  # what the device says it uses; "" from agents that do not say


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
exactly-once stream; an exception rolls back the flush, so nothing is acked half-derived (the
batch is then retried split by device, so only the device whose rows make it raise is refused).
Observers must be idempotent per (device_id, seq): a record may be seen again after a lost ack.
"""

ReportObserver = Callable[[Connection, list[ReportRow]], None]
"""Runs inside the flush transaction, after the device rows are updated, with every report of
the batch (latest per device). Same failure rule as TelemetryObserver; must be idempotent (a
report may be seen again). Example: certs/renewal.py promotes a renewed certificate that a
report says is in use."""


Done = Callable[[BaseException | None], None]
"""Called on the serving loop after the flush holding the row: None on commit, else the error
(`StorageUnavailableError` or `RowsRefusedError`). Called directly (no future, no extra loop
iteration): this runs once per device message."""


FlushHook = Callable[[float, int], None]
"""Called on the serving loop after every flush (committed or not) with its duration in seconds
and its row count: the /metrics flush histogram (observability/metrics.py). Must not block."""


class StorageUnavailableError(Exception):
    """The database is unreachable or refused the connection: retry later (everyone)."""


class RowsRefusedError(Exception):
    """Some of this device's rows could not be stored (its own data failed a constraint or an
    observer); its other rows in the flush were committed.

    `seqs` maps each refused telemetry seq to the reason; `report` is the reason its report was
    refused ("" when it was stored or there was none).
    """

    def __init__(self, detail: str, *, seqs: dict[int, str], report: str = "") -> None:
        super().__init__(detail)
        self.seqs = seqs
        self.report = report


class RowsFailedError(Exception):
    """This device's rows failed and were too many to isolate one by one: nothing of them was
    stored; the device should resend (in smaller batches)."""
