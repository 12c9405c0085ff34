"""REST routes of the fleet view (the operator console's reads): /me, /fleet/summary,
/fleet/devices, /devices/{id}/series and the /events stream (Server-Sent Events).

Every route needs a viewer token in the Authorization header (never a cookie). Query strings are
bounded and checked here, so garbage is a 422 with a reason (never a 500). Does not own the SQL
(queries.py, series.py) or the poller (events.py).
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from fleet_server.api.deps import RegistryDep, SessionDep, SettingsDep, Viewer
from fleet_server.api.errors import NOT_FOUND, UNAVAILABLE
from fleet_server.api.params import LABEL_KEY_PATTERN, DeviceIdPath, NoNul, Offset, page_size
from fleet_server.errors import InvalidRequestError
from fleet_server.fleetview import queries, series
from fleet_server.fleetview.events import EventHub, HubClosedError
from fleet_server.fleetview.health import STALE_AFTER_S, Health
from fleet_server.fleetview.queries import DeviceFilter, Sort
from fleet_server.models import DevicePublic, as_utc, utcnow
from fleet_server.settings import Settings

router = APIRouter(tags=["fleet view"])

_LABEL_KEY = re.compile(LABEL_KEY_PATTERN)
MAX_WINDOW_S = 7 * 24 * 3600


class Me(BaseModel):
    id: str
    name: str
    role: str
    expires_at: datetime | None


class LabelCount(BaseModel):
    key: str
    value: str
    count: int


class FleetSummary(BaseModel):
    total: int
    online: int
    offline: int
    revoked: int
    by_transport: dict[str, int]
    by_profile: dict[str, int]
    by_model: dict[str, int]
    by_health: dict[str, int]
    by_label: list[LabelCount]


class FleetDevice(DevicePublic):
    model: str | None = None  # "name@version" the device serves; None when it reports none
    health: Health


class FleetPage(BaseModel):
    total: int
    items: list[FleetDevice]


class DeviceSeries(BaseModel):
    t: list[float]
    latency_p50_ms: list[float | None]
    latency_p95_ms: list[float | None]
    throughput_per_s: list[float | None]
    errors: list[float | None]
    outbox: list[int | None]


def _stale_before(settings: Settings) -> datetime:
    stale_s = int(getattr(settings, "fleet_stale_after_s", STALE_AFTER_S))
    return utcnow() - timedelta(seconds=stale_s)


def _label_selector(items: list[str] | None) -> tuple[tuple[str, str], ...]:
    """Raises: InvalidRequestError (422) for an item without '=' or with a bad key."""
    selector: list[tuple[str, str]] = []
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidRequestError(f"label filter {item[:80]!r} must be key=value")
        if not _LABEL_KEY.fullmatch(key):
            raise InvalidRequestError(f"label filter key {key[:80]!r} is not a label key")
        if len(value) > 253 or "\x00" in value:
            raise InvalidRequestError(f"label filter value for {key!r} is longer than 253 or has a NUL")
        selector.append((key, value))
    return tuple(selector)


@router.get("/me", response_model=Me)
def me(operator: Viewer) -> Me:
    """Who this token is: the console shows or hides actions by `role`."""
    return Me(id=operator.id, name=operator.name, role=operator.role, expires_at=as_utc(operator.expires_at))


@router.get("/fleet/summary", response_model=FleetSummary)
def fleet_summary(session: SessionDep, registry: RegistryDep, settings: SettingsDep, _: Viewer) -> Any:
    return queries.summary(session, online=registry.online(), stale_before=_stale_before(settings))


Text = Annotated[str, Query(max_length=128, pattern=NoNul)]


@router.get("/fleet/devices", response_model=FleetPage)
def fleet_devices(
    *,
    session: SessionDep,
    registry: RegistryDep,
    settings: SettingsDep,
    _: Viewer,
    q: Annotated[str, Query(max_length=128, pattern=NoNul, description="substring of id or model")] = "",
    profile: Text = "",
    label: Annotated[list[str] | None, Query(max_length=64, description="key=value; repeat to AND")] = None,
    online: bool | None = None,
    model: Annotated[str, Query(max_length=200, pattern=NoNul, description="name@version or none")] = "",
    health: Health | None = None,
    sort: Sort = Sort.ID,
    limit: Annotated[int, page_size(500)] = 50,
    offset: Offset = 0,
) -> Any:
    flt = DeviceFilter(
        q=q, profile=profile, labels=_label_selector(label), online=online, model=model, health=health
    )
    ids = registry.online()
    page = queries.device_page(
        session, flt, sort=sort, limit=limit, offset=offset, online=ids, stale_before=_stale_before(settings)
    )
    return {"total": page.total, "items": [queries.public_item(d, h, ids) for d, h in page.rows]}


@router.get("/devices/{device_id}/series", response_model=DeviceSeries, responses=NOT_FOUND)
def device_series(
    device_id: DeviceIdPath,
    session: SessionDep,
    _: Viewer,
    window_s: Annotated[int, Query(ge=60, le=MAX_WINDOW_S, description="seconds back from now")] = 3600,
    points: Annotated[int, Query(ge=2, le=1000, description="buckets")] = 120,
) -> Any:
    if window_s < points:
        raise InvalidRequestError(f"window_s ({window_s}) must be at least points ({points}): buckets >= 1 s")
    return series.device_series(session, device_id, now_s=time.time(), window_s=window_s, points=points)


_SSE: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {}}}}


@router.get("/events", response_class=StreamingResponse, responses=_SSE | UNAVAILABLE)
async def fleet_events(request: Request, session: SessionDep, _: Viewer) -> StreamingResponse:
    """Server-Sent Events: fleet, device, rollout, run and audit changes; `: ping` every 15 s."""
    # The stream outlives the request's dependencies: hold no pooled connection while it runs.
    await asyncio.to_thread(session.close)
    hub: EventHub | None = getattr(request.app.state, "fleet_events", None)
    if hub is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "live events are not running")
    try:
        sub = hub.subscribe()
    except HubClosedError as err:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(err)) from err
    return StreamingResponse(
        hub.stream(sub),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
