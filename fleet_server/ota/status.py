"""Telemetry observer: OTA transition reports (kind ``ota``) -> ``ota_device_status``.

Runs inside the ingest flush transaction. Idempotent per (device_id, seq) and robust to duplicate
transition reports after an agent crash: a row only moves forward when the report's transition
number is higher than the stored one, so the final status is the device's last transition.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import SQLModel

from fleet_server.ingest import TelemetryRow
from fleet_server.models import utcnow
from fleet_server.ota.models import OtaDeviceStatus

logger = logging.getLogger(__name__)

KIND = "ota"
_table = SQLModel.metadata.tables[OtaDeviceStatus.__tablename__]


def parse_report(row: TelemetryRow) -> dict[str, Any] | None:
    try:
        data = json.loads(row.payload)
        return {
            "deployment_id": str(data["deployment_id"])[:64],
            "release_seq": int(data.get("release_seq", 0)),
            "state": str(data["to"])[:32],
            "event": str(data.get("event", ""))[:64],
            "detail": str(data.get("detail", ""))[:1024],
            "transition": int(data["transition"]),
        }
    except (ValueError, KeyError, TypeError):
        return None


def ota_status_observer(conn: Connection, rows: list[tuple[str, TelemetryRow]]) -> None:
    """Upsert the status of every (device, deployment) seen in `rows`."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for device_id, row in rows:
        if row.kind != KIND:
            continue
        report = parse_report(row)
        if report is None or not report["deployment_id"]:
            logger.warning("malformed ota report device_id=%s seq=%d", device_id, row.seq)
            continue
        key = (device_id, report["deployment_id"])
        if key not in latest or latest[key]["transition"] < report["transition"]:
            latest[key] = {**report, "device_id": device_id, "report_seq": row.seq}
    if not latest:
        return
    now = utcnow()
    insert = postgresql.insert(_table) if conn.dialect.name == "postgresql" else sqlite.insert(_table)
    for values in latest.values():
        stmt = insert.values(**values, updated_at=now)
        stmt = stmt.on_conflict_do_update(
            index_elements=["device_id", "deployment_id"],
            set_={
                k: stmt.excluded[k]
                for k in ("state", "event", "detail", "transition", "report_seq", "updated_at")
            },
            where=_table.c.transition < stmt.excluded.transition,
        )
        conn.execute(stmt)
