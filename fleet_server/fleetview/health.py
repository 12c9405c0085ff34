"""A device's fleet health as one SQL expression, so the fleet view filters and counts by it in the
same statement that pages the devices.

    revoked   the device was revoked (Device.status)
    stale     not seen for `stale_after_s` (or never seen): nothing else about it is current
    degraded  it reports itself degraded or failing (Device.reported_health), or it has an open
              drift episode, or its latest OTA status (highest transition) is failed or refused
              (the same rule as crud/devices.py `_ota_health`)
    healthy   everything else

The order is the precedence (a revoked device that is also stale is "revoked"). Owns the rule; does
not own the columns it reads (columns.py writes model / reported_health).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ColumnElement, case, exists, literal, or_, select
from sqlalchemy.orm import aliased
from sqlmodel import col

from fleet_server.drift.models import DriftEpisodeRow
from fleet_server.models import Device
from fleet_server.ota.models import UNHEALTHY_STATES, OtaDeviceStatus

STALE_AFTER_S = 300
"""Default for "stale": ten missed reports at the agent's default 30 s report interval."""


class Health(StrEnum):
    HEALTHY = "healthy"
    STALE = "stale"
    DEGRADED = "degraded"
    REVOKED = "revoked"


def _ota_unhealthy() -> ColumnElement[bool]:
    s, later = aliased(OtaDeviceStatus), aliased(OtaDeviceStatus)
    newer = exists().where(
        col(later.device_id) == col(s.device_id), col(later.transition) > col(s.transition)
    )
    return exists().where(
        col(s.device_id) == col(Device.id),
        col(s.transition) > 0,
        col(s.state).in_(sorted(UNHEALTHY_STATES)),
        ~newer,
    )


def _drift_open() -> ColumnElement[bool]:
    return exists(
        select(literal(1)).where(
            col(DriftEpisodeRow.device_id) == col(Device.id), col(DriftEpisodeRow.state) == "open"
        )
    )


def health_expr(stale_before: datetime) -> ColumnElement[str]:
    """CASE expression over `device` (correlated): one of the `Health` values."""
    last_seen = col(Device.last_seen_at)
    return case(
        (col(Device.status) == "revoked", literal(Health.REVOKED.value)),
        (or_(last_seen.is_(None), last_seen < stale_before), literal(Health.STALE.value)),
        (
            or_(
                col(Device.reported_health).in_(("degraded", "failing")),
                _drift_open(),
                _ota_unhealthy(),
            ),
            literal(Health.DEGRADED.value),
        ),
        else_=literal(Health.HEALTHY.value),
    )
