"""The fleet view's reads: the summary counts and one filtered, sorted page of devices, in SQL.

Every read is a fixed number of statements whatever the page size or fleet size (the summary:
six; a page: two, the count and the rows), so the console's calls stay flat at 10,000 devices.
The online set lives in memory (SessionRegistry), so it enters SQL as one parameter: a text array
on PostgreSQL, a JSON array read with json_each on SQLite (no per-id parameter, no variable limit).
Does not own HTTP (routes.py) or the health rule (health.py).
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, String, any_, case, false, func, literal, select, true
from sqlalchemy.dialects import postgresql
from sqlmodel import Session, col
from sqlmodel import select as select_entities

from fleet_server.fleetview.health import Health, health_expr
from fleet_server.models import Device, device_public

MAX_LABELS = 50
NO_MODEL = "none"  # filter/summary value for devices that report no model


class Sort(StrEnum):
    ID = "id"
    ID_DESC = "-id"
    LAST_SEEN = "last_seen_at"
    LAST_SEEN_DESC = "-last_seen_at"
    PROFILE = "profile"
    PROFILE_DESC = "-profile"
    MODEL = "model"
    MODEL_DESC = "-model"


@dataclass(frozen=True)
class DeviceFilter:
    q: str = ""  # substring of the id or the model
    profile: str = ""
    labels: tuple[tuple[str, str], ...] = ()  # (key, value) pairs, ANDed
    online: bool | None = None
    model: str = ""  # "name@version", or NO_MODEL
    health: Health | None = None


def in_ids(column: Any, ids: Collection[str], dialect: str) -> ColumnElement[bool]:
    """`column IN ids` with one bound parameter whatever len(ids)."""
    if not ids:
        return false()
    cond: ColumnElement[bool]
    if dialect == "postgresql":
        cond = column == any_(literal(sorted(ids), type_=postgresql.ARRAY(String)))
    else:
        each = func.json_each(json.dumps(sorted(ids))).table_valued("value")
        cond = column.in_(select(each.c.value))
    return cond


def _where(flt: DeviceFilter, *, online: Collection[str], dialect: str, stale_before: datetime) -> list[Any]:
    conds: list[Any] = []
    if flt.q:
        conds.append(
            col(Device.id).contains(flt.q, autoescape=True)
            | col(Device.model).contains(flt.q, autoescape=True)
        )
    if flt.profile:
        conds.append(col(Device.profile) == flt.profile)
    for key, value in flt.labels:
        conds.append(col(Device.labels)[key].as_string() == value)
    if flt.online is not None:
        member = in_ids(col(Device.id), online, dialect)
        conds.append(member if flt.online else ~member)
    if flt.model:
        conds.append(col(Device.model) == ("" if flt.model == NO_MODEL else flt.model))
    if flt.health is not None:
        conds.append(health_expr(stale_before) == flt.health.value)
    return conds


def _order(sort: Sort) -> list[Any]:
    column = {
        "id": col(Device.id),
        "last_seen_at": col(Device.last_seen_at),
        "profile": col(Device.profile),
        "model": col(Device.model),
    }[sort.value.lstrip("-")]
    desc = sort.value.startswith("-")
    ordered = column.desc() if desc else column.asc()
    if column is col(Device.last_seen_at):
        ordered = ordered.nulls_last()
    tiebreak = col(Device.id).desc() if desc else col(Device.id).asc()
    return [ordered] if column is col(Device.id) else [ordered, tiebreak]


@dataclass(frozen=True)
class DevicePage:
    total: int
    rows: list[tuple[Device, str]]  # (device, health)


def device_page(
    session: Session,
    flt: DeviceFilter,
    *,
    sort: Sort,
    limit: int,
    offset: int,
    online: Collection[str],
    stale_before: datetime,
) -> DevicePage:
    """Two statements: the count of matching devices and the requested page with its health."""
    dialect = session.get_bind().dialect.name
    where = _where(flt, online=online, dialect=dialect, stale_before=stale_before)
    conn = session.connection()
    total = conn.execute(select(func.count()).select_from(Device).where(*where)).scalar_one()
    stmt = (
        select_entities(Device, health_expr(stale_before).label("health"))
        .where(*where)
        .order_by(*_order(sort))
        .limit(limit)
        .offset(offset)
    )
    rows = [(device, str(health)) for device, health in session.exec(stmt)]
    return DevicePage(total=int(total), rows=rows)


def summary(session: Session, *, online: Collection[str], stale_before: datetime) -> dict[str, Any]:
    """Counts for the whole fleet (six statements)."""
    dialect = session.get_bind().dialect.name
    is_online = in_ids(col(Device.id), online, dialect)
    revoked = col(Device.status) == "revoked"
    total, n_online, n_revoked = (
        session.connection()
        .execute(
            select(
                func.count(),
                func.coalesce(func.sum(_flag(is_online)), 0),
                func.coalesce(func.sum(_flag(revoked)), 0),
            ).select_from(Device)
        )
        .one()
    )
    health = select(health_expr(stale_before).label("health")).select_from(Device).subquery()
    by_health = dict.fromkeys([h.value for h in Health], 0)
    by_health.update(_counts(session, select(health.c.health, func.count()).group_by(health.c.health)))
    by_model = _counts(session, select(col(Device.model), func.count()).group_by(col(Device.model)))
    if "" in by_model:
        by_model[NO_MODEL] = by_model.pop("") + by_model.get(NO_MODEL, 0)
    return {
        "total": int(total),
        "online": int(n_online),
        "offline": int(total) - int(n_online),
        "revoked": int(n_revoked),
        "by_transport": _counts(
            session, select(col(Device.transport), func.count()).group_by(col(Device.transport))
        ),
        "by_profile": _counts(
            session, select(col(Device.profile), func.count()).group_by(col(Device.profile))
        ),
        "by_model": by_model,
        "by_health": by_health,
        "by_label": _labels(session, dialect),
    }


def _flag(cond: ColumnElement[bool]) -> Any:
    return case((cond, 1), else_=0)


def _counts(session: Session, stmt: Any) -> dict[str, int]:
    return {str(key or ""): int(n) for key, n in session.connection().execute(stmt)}


def _labels(session: Session, dialect: str) -> list[dict[str, Any]]:
    """The MAX_LABELS most common key=value pairs, most common first."""
    fn = func.json_each_text if dialect == "postgresql" else func.json_each
    kv = fn(col(Device.labels)).table_valued("key", "value").alias("kv")
    n = func.count().label("n")
    stmt = (
        select(kv.c.key, kv.c.value, n)
        .select_from(Device)
        .join(kv, true())
        .group_by(kv.c.key, kv.c.value)
        .order_by(n.desc(), kv.c.key, kv.c.value)
        .limit(MAX_LABELS)
    )
    return [
        {"key": str(k), "value": str(v), "count": int(c)} for k, v, c in session.connection().execute(stmt)
    ]


def public_item(device: Device, health: str, online: Collection[str]) -> dict[str, Any]:
    """DevicePublic's fields plus `model` ("name@version" or None) and `health`."""
    return {**device_public(device, online).model_dump(), "model": device.model or None, "health": health}
