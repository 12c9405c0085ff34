"""Telemetry observer: OTA transition reports (kind ``ota``) -> ``ota_device_status``.

Runs inside the ingest flush transaction and never raises for what a device sent. Every field of
a report is checked (types, string bounds, integers within BIGINT); a malformed report is
refused for that one record (logged with the device id and counted in `REFUSALS`), never stored.
A report is stored only for a deployment that targets the reporting device: deploying creates one
status row per targeted device, and a report may only move that row forward. A report for an
unknown deployment, or one aimed at other devices, is refused the same way (a device cannot add
rows to a deployment it is not part of). Idempotent per (device_id, seq) and robust to duplicate
transition reports after an agent crash: a row only moves forward when the report's transition
number is higher than the stored one, so the final status is the device's last transition.

Does not decide what the device's health is (crud/devices.py reads these rows for that, see
`models.UNHEALTHY_STATES`).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from typing import Any

from sqlalchemy import Connection, select, update
from sqlmodel import SQLModel

from fleet_server.ingest import TelemetryRow
from fleet_server.models import utcnow
from fleet_server.ota.models import OtaDeviceStatus

logger = logging.getLogger(__name__)

KIND = "ota"
BIGINT_MAX = (1 << 63) - 1
MAX_PAYLOAD_BYTES = 8192
_table = SQLModel.metadata.tables[OtaDeviceStatus.__tablename__]
_DEPLOYMENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_WORD_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
_EVENT_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
# States a deployment row may show, as the agent's update machine names them.
STATES = frozenset(
    {
        "downloading", "verifying", "staging", "golden_check", "shadowing", "switching", "watching",
        "awaiting_window", "committing", "reverting", "committed", "failed", "rolled_back", "refused", "idle",
    }
)  # fmt: skip

REFUSALS: Counter[str] = Counter()
"""Refused ota reports by reason since start (``malformed``, ``unknown deployment``)."""


class ReportRefused(ValueError):
    """The report is malformed; the message says which field."""


def _int(data: dict[str, Any], key: str, *, default: int | None = None) -> int:
    value = data.get(key, default)
    if value is None:
        raise ReportRefused(f"{key} missing")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ReportRefused(f"{key} is not an integer")
    if not 0 <= value <= BIGINT_MAX:
        raise ReportRefused(f"{key} out of range")
    return value


def _str(data: dict[str, Any], key: str, *, limit: int, pattern: re.Pattern[str] | None = None) -> str:
    value = data.get(key, "")
    if not isinstance(value, str):
        raise ReportRefused(f"{key} is not a string")
    if pattern is not None:
        if not pattern.fullmatch(value):
            raise ReportRefused(f"{key} is not a valid identifier")
        return value
    return value[:limit]


def parse_report(row: TelemetryRow) -> dict[str, Any]:
    """The report's fields, checked.

    Raises:
        ReportRefused: not a JSON object, a field of the wrong type, out of range or unbounded.
    """
    if len(row.payload) > MAX_PAYLOAD_BYTES:
        raise ReportRefused(f"payload larger than {MAX_PAYLOAD_BYTES} bytes")
    try:
        data = json.loads(row.payload)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise ReportRefused("payload is not JSON") from err
    if not isinstance(data, dict):
        raise ReportRefused("payload is not a JSON object")
    state = _str(data, "to", limit=32, pattern=_WORD_RE)
    if state not in STATES:
        raise ReportRefused("unknown state")
    event = _str(data, "event", limit=MAX_PAYLOAD_BYTES)
    if event and not _EVENT_RE.fullmatch(event):
        raise ReportRefused("event is not a valid identifier")
    return {
        "deployment_id": _str(data, "deployment_id", limit=64, pattern=_DEPLOYMENT_RE),
        "release_seq": _int(data, "release_seq", default=0),
        "state": state,
        "event": event,
        "detail": "".join(ch if ch.isprintable() else " " for ch in _str(data, "detail", limit=1024)),
        "transition": _int(data, "transition"),
    }


def _refuse(device_id: str, row: TelemetryRow, reason: str, why: str) -> None:
    REFUSALS[reason] += 1
    logger.warning("ota report refused device_id=%r seq=%d reason=%s: %s", device_id, row.seq, reason, why)


def ota_status_observer(conn: Connection, rows: list[tuple[str, TelemetryRow]]) -> None:
    """Move the status of every (device, deployment) seen in `rows` forward."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    origin: dict[tuple[str, str], TelemetryRow] = {}
    for device_id, row in rows:
        if row.kind != KIND:
            continue
        try:
            report = parse_report(row)
        except ReportRefused as err:
            _refuse(device_id, row, "malformed", str(err))
            continue
        key = (device_id, report["deployment_id"])
        if key not in latest or latest[key]["transition"] < report["transition"]:
            latest[key] = {**report, "report_seq": min(row.seq, BIGINT_MAX)}
            origin[key] = row
    if not latest:
        return
    deployments = sorted({d for _, d in latest})
    targeted = {
        (r.device_id, r.deployment_id)
        for r in conn.execute(
            select(_table.c.device_id, _table.c.deployment_id).where(_table.c.deployment_id.in_(deployments))
        )
    }
    now = utcnow()
    for key, values in latest.items():
        if key not in targeted:
            _refuse(
                key[0],
                origin[key],
                "unknown deployment",
                f"deployment {key[1]!r} does not target this device",
            )
            continue
        conn.execute(
            update(_table)
            .where(
                _table.c.device_id == key[0],
                _table.c.deployment_id == key[1],
                _table.c.transition < values["transition"],
            )
            .values(
                state=values["state"],
                event=values["event"],
                detail=values["detail"],
                transition=values["transition"],
                report_seq=values["report_seq"],
                updated_at=now,
            )
        )
