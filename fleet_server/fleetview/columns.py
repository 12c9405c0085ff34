"""The device columns the fleet view reads in SQL, derived from the observed state of each report.

Owns `running_model` and `reported_health` (pure: observed dict -> column value) and the ingest
`ReportObserver` that writes them (`Device.model`, `Device.reported_health`) in the flush
transaction that stores the report, so they can never disagree with `Device.observed` after a
commit. Migration 0014 fills them for devices that reported before it. Does not decide a
device's fleet health (health.py combines these with revocation, staleness, OTA and drift).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, update
from sqlmodel import SQLModel

from fleet_server.ingest import ReportRow
from fleet_server.models import Device

MODEL_MAX_LEN = 200
SERVING_SLOTS = ("default", "current")
"""The slot the agent serves from, in order of preference (agent/ota/client.py reports "default";
the on-disk slot layout calls it "current"); any other slot is used only when neither is present."""
REPORTED_HEALTH = frozenset({"ok", "degraded", "failing", "unknown"})


def running_model(observed: dict[str, Any] | None) -> str:
    """ "name@version" of the model the device serves, "" when it reports none."""
    slots = (observed or {}).get("slots")
    if not isinstance(slots, list):
        return ""
    valid = [s for s in slots if isinstance(s, dict) and s.get("model_name")]
    if not valid:
        return ""
    rank = {name: i for i, name in enumerate(SERVING_SLOTS)}
    best = min(valid, key=lambda s: rank.get(str(s.get("slot", "")), len(rank)))
    return f"{best['model_name']}@{best.get('model_version', '')}"[:MODEL_MAX_LEN]


def reported_health(observed: dict[str, Any] | None) -> str:
    """The device's own health word ("ok", "degraded", "failing"); "unknown" for anything else."""
    value = (observed or {}).get("health")
    return value if isinstance(value, str) and value in REPORTED_HEALTH else "unknown"


_device = SQLModel.metadata.tables[Device.__tablename__]
_UPDATE = (
    update(_device)
    .where(_device.c.id == bindparam("b_id"))
    .values(model=bindparam("b_model"), reported_health=bindparam("b_health"))
)


def fleetview_columns_observer(conn: Connection, reports: Sequence[ReportRow]) -> None:
    """`ingest.ReportObserver`: one executemany per flush; idempotent (a pure function of the report)."""
    if not reports:
        return
    conn.execute(
        _UPDATE,
        [
            {
                "b_id": r.device_id,
                "b_model": running_model(r.observed),
                "b_health": reported_health(r.observed),
            }
            for r in reports
        ],
    )
