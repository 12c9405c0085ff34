"""The ingest writer's SQL: the statements and parameters its rows become, and which database
errors mean the database itself is down.

Owns the Device update a report makes (`_REPORT_UPDATE`, `_report_params`), the parameters of a
telemetry insert (`_telemetry_params`), and the classification the writer's retry rule rests on
(`_storage_down`: unreachable, so no per-device retry) with the short, SQL-free reason a refused
row carries (`_describe`).

Does not open connections or transactions, batch, retry or acknowledge (ingest.py does), and does
not build the dialect-specific telemetry insert (the writer does, from its engine's dialect).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, update
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlmodel import SQLModel

from fleet_server.ingest_rows import ReportRow, TelemetryRow
from fleet_server.logsafe import text as safe_text
from fleet_server.models import Device


def _storage_down(err: BaseException) -> bool:
    """True when the database itself is unreachable (retrying per device would only hammer it)."""
    if isinstance(err, OperationalError | InterfaceError | PoolTimeoutError):
        return True
    return isinstance(err, DBAPIError) and bool(err.connection_invalidated)


def _describe(err: BaseException) -> str:
    """A short, single-line reason: the driver's message without SQL or parameters."""
    orig = getattr(err, "orig", None) or err
    first = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
    return f"{type(orig).__name__}: {safe_text(first, 200)}"


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
        transport=bindparam("b_transport"),
    )
)


def _report_params(row: ReportRow, now: datetime, rejected: int) -> dict[str, Any]:
    observed = {**row.observed, "ingest_rejected_total": rejected} if rejected else row.observed
    return {
        "b_id": row.device_id,
        "b_now": now,
        "b_agent_version": row.agent_version,
        "b_observed": observed,
        "b_dropped": row.telemetry_dropped_total,
        "b_transport": row.transport,
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
