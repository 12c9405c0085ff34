"""Device registry routes: list, get, label, telemetry."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel

from fleet_server.api.deps import Operator, RegistryDep, SessionDep, Viewer
from fleet_server.api.errors import NOT_FOUND
from fleet_server.api.params import AfterSeq, DeviceIdPath, LabelChanges, LabelSelector, Offset, page_size
from fleet_server.crud import devices as crud
from fleet_server.errors import InvalidRequestError
from fleet_server.models import DevicePublic, TelemetryPublic, as_utc, device_public

router = APIRouter(prefix="/devices", tags=["devices"])


class DeviceLabelsUpdate(BaseModel):
    """Set (value is a string) or remove (value is null) labels."""

    labels: LabelChanges


@router.get("", response_model=list[DevicePublic])
def list_devices(
    session: SessionDep,
    registry: RegistryDep,
    _: Viewer,
    label: LabelSelector = None,
    limit: Annotated[int, page_size(5000)] = 500,
    offset: Offset = 0,
) -> list[DevicePublic]:
    selector: dict[str, str] = {}
    for item in label or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidRequestError(f"label selector {item!r} must be key=value")
        selector[key] = value
    online = registry.online()
    return [
        device_public(d, online)
        for d in crud.list_devices(session=session, label=selector, limit=limit, offset=offset)
    ]


@router.get("/{device_id}", response_model=DevicePublic, responses=NOT_FOUND)
def get_device(
    device_id: DeviceIdPath, session: SessionDep, registry: RegistryDep, _: Viewer
) -> DevicePublic:
    return device_public(crud.get_device(session=session, device_id=device_id), registry.online())


@router.patch("/{device_id}/labels", response_model=DevicePublic, responses=NOT_FOUND)
def label_device(
    device_id: DeviceIdPath, body: DeviceLabelsUpdate, session: SessionDep, registry: RegistryDep, _: Operator
) -> DevicePublic:
    device = crud.update_labels(session=session, device_id=device_id, changes=body.labels)
    registry.notify_desired_changed(device_id)
    return device_public(device, registry.online())


@router.get("/{device_id}/telemetry", response_model=list[TelemetryPublic], responses=NOT_FOUND)
def device_telemetry(
    device_id: DeviceIdPath,
    session: SessionDep,
    _: Viewer,
    after_seq: AfterSeq = 0,
    limit: Annotated[int, page_size(10000)] = 100,
) -> list[TelemetryPublic]:
    rows = crud.list_telemetry(session=session, device_id=device_id, after_seq=after_seq, limit=limit)
    return [
        TelemetryPublic(
            seq=r.seq,
            timestamp_ms=r.timestamp_ms,
            kind=r.kind,
            metrics=r.metrics,
            payload_bytes=len(r.payload),
            received_at=as_utc(r.received_at),
        )
        for r in rows
    ]
