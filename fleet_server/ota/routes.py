"""HTTP surface of OTA: static TUF repository under ``/ota`` and the release REST API.

``/ota/metadata/*`` and ``/ota/targets/*`` are plain static files with HTTP Range, streamed from the
artifact store (`serve.py`; a CDN or the bucket itself could serve the same objects); only
``timestamp.json`` goes through a route that re-signs the timestamp when it is stale (online key),
on the replica that holds the signer duty (`signer.py`; a server without coordination always
does). The REST routes are thin: validation and roles here, work in `OtaService`.
Only this module raises HTTPException.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request, Response
from sqlmodel import Session, col, select
from tuf.api.exceptions import RepositoryError

from fleet_server.api.deps import Admin, Operator, RegistryDep, SessionDep, Viewer
from fleet_server.api.errors import CONFLICT, NOT_FOUND, TOO_LARGE
from fleet_server.api.params import IdPath, ReleaseSeq
from fleet_server.artifacts.factory import store_from_settings
from fleet_server.audit.chain import Target
from fleet_server.audit.port import operator_actor, record_change
from fleet_server.crud.tokens import authenticate_operator
from fleet_server.errors import AuthError, NotFoundError
from fleet_server.models import utcnow
from fleet_server.ota.access import GuardedRepository, access_for
from fleet_server.ota.models import (
    DeploymentCreate,
    DeviceStatusPublic,
    OtaDeviceStatus,
    OtaRelease,
    ReleaseCreate,
    ReleasePublic,
)
from fleet_server.ota.releases import OtaService
from fleet_server.ota.serve import RepositoryFiles
from fleet_server.settings import Settings

logger = logging.getLogger(__name__)

MAX_BLOB_BYTES = 2 << 30


def get_ota(request: Request) -> OtaService:
    service: OtaService = request.app.state.ota
    return service


OtaDep = Annotated[OtaService, Depends(get_ota)]
router = APIRouter(tags=["ota"])


@router.put("/ota/blobs", responses=TOO_LARGE)
async def upload_blob(request: Request, ota: OtaDep, _: Operator) -> dict[str, object]:
    upload = ota.new_upload()
    size = 0
    try:
        with upload.open("wb") as fh:
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BLOB_BYTES:
                    raise HTTPException(413, f"blob larger than {MAX_BLOB_BYTES} bytes")
                await asyncio.to_thread(fh.write, chunk)
        sha, length = await asyncio.to_thread(ota.adopt_blob, upload)
    finally:
        upload.unlink(missing_ok=True)
    return {"sha256": sha, "length": length}


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=8,
        max_length=128,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="Client key of this publish: the same key and request again returns the release "
        "it made (200) instead of a duplicate; the same key with another request is a 409.",
    ),
]
_REPLAYED: dict[int | str, dict[str, Any]] = {
    200: {"model": ReleasePublic, "description": "already published with this Idempotency-Key"}
}


@router.post(
    "/releases",
    response_model=ReleasePublic,
    status_code=201,
    responses=NOT_FOUND | CONFLICT | _REPLAYED,
)
def publish_release(
    spec: ReleaseCreate,
    session: SessionDep,
    ota: OtaDep,
    operator: Operator,
    *,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> OtaRelease:
    actor = operator_actor(operator)
    if idempotency_key is None:
        return ota.publish(session=session, spec=spec, created_by=operator.name, actor=actor)
    row, created = ota.publish_once(
        session=session, spec=spec, created_by=operator.name, idempotency_key=idempotency_key, actor=actor
    )
    if not created:
        response.status_code = 200
    return row


@router.get("/releases", response_model=list[ReleasePublic])
def list_releases(session: SessionDep, ota: OtaDep, _: Viewer) -> list[OtaRelease]:
    return ota.list_releases(session=session)


@router.post("/releases/{seq}/deployments", status_code=201, responses=NOT_FOUND)
def deploy_release(
    seq: ReleaseSeq,
    body: DeploymentCreate,
    session: SessionDep,
    ota: OtaDep,
    registry: RegistryDep,
    *,
    operator: Operator,
) -> dict[str, object]:
    deployment_id = ota.deploy(
        session=session, release_seq=seq, device_ids=body.device_ids, actor=operator_actor(operator)
    )
    for device_id in body.device_ids:
        registry.notify_desired_changed(device_id)
    return {"deployment_id": deployment_id, "devices": len(body.device_ids)}


@router.get("/releases/{seq}/deployments", response_model=list[DeviceStatusPublic], responses=NOT_FOUND)
def release_deployments(seq: ReleaseSeq, session: SessionDep, _: Viewer) -> list[object]:
    """Every device status of every deployment of release `seq` (404 for an unknown release)."""
    if session.get(OtaRelease, seq) is None:
        raise NotFoundError(f"release {seq} not found")
    stmt = select(OtaDeviceStatus).where(OtaDeviceStatus.release_seq == seq)
    order = (col(OtaDeviceStatus.deployment_id), col(OtaDeviceStatus.device_id))
    rows: list[OtaDeviceStatus] = list(session.exec(stmt.order_by(*order)))
    return list(rows)


@router.get("/deployments/{deployment_id}", response_model=list[DeviceStatusPublic])
def deployment_status(deployment_id: IdPath, session: SessionDep, ota: OtaDep, _: Viewer) -> list[object]:
    return list(ota.statuses(session=session, deployment_id=deployment_id))


MAX_ROOT_BYTES = 512_000  # python-tuf's own root_max_length
_ROOT_SHAPE = {  # what _root_document checks; the signatures are checked by python-tuf
    "type": "object",
    "required": ["signed", "signatures"],
    "properties": {
        "signed": {"type": "object", "required": ["_type"], "properties": {"_type": {"const": "root"}}},
        "signatures": {"type": "array", "items": {"type": "object"}},
    },
}
_ROOT_BODY = {
    "requestBody": {
        "required": True,
        "description": "the new root.json, signed by the old and the new root keys",
        "content": {"application/json": {"schema": _ROOT_SHAPE}},
    }
}


async def _root_document(request: Request) -> bytes:
    """The body if it is a JSON object that claims to be root metadata, else a 413/422 with why."""
    data = b""
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_ROOT_BYTES:
            raise HTTPException(413, f"root metadata larger than {MAX_ROOT_BYTES} bytes")
    try:
        document = json.loads(data)
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
        raise HTTPException(422, f"root refused: body is not JSON ({err})") from err
    signed = document.get("signed") if isinstance(document, dict) else None
    if not isinstance(signed, dict) or signed.get("_type") != "root":
        raise HTTPException(
            422, 'root refused: expected {"signed": {"_type": "root", ...}, "signatures": [...]}'
        )
    return data


@router.post("/ota/root", openapi_extra=_ROOT_BODY, responses=TOO_LARGE)
async def install_root(request: Request, ota: OtaDep, admin: Admin) -> dict[str, int]:
    data = await _root_document(request)
    try:
        version = await asyncio.to_thread(ota.repo.install_root, data)
    except (RepositoryError, ValueError, KeyError, TypeError) as err:
        raise HTTPException(422, f"root refused: {err}") from err
    root = json.loads(data)["signed"].get("roles", {}).get("root", {})  # verified by install_root
    details = {"keyids": list(root.get("keyids", []))[:20], "threshold": root.get("threshold")}
    await asyncio.to_thread(
        record_change, ota.audit, operator_actor(admin), "ota.root.rotated", Target("ota_root", str(version)),
        details,
    )  # fmt: skip
    return {"version": version}


def mount_ota(app: FastAPI, api: APIRouter, settings: Settings) -> OtaService:
    """Create the OTA service (keys under ``<data_dir>/ota``, artifacts in the configured store),
    add its REST routes to `api` and the static repository to `app` (call before
    `app.include_router(api)`)."""
    ota = OtaService(settings.data_dir / "ota", store=store_from_settings(settings))
    app.state.ota = ota
    api.include_router(router)

    @app.get("/ota/metadata/timestamp.json", include_in_schema=False)
    def timestamp(request: Request) -> Response:
        service: OtaService = request.app.state.ota
        if service.signs_timestamps:
            service.refresh_if_stale(utcnow(), roles=False)  # the role sweep runs in the signer duty
        data = service.store.get(service.repo.metadata_key("timestamp.json"))
        return Response(data, media_type="application/json", headers={"Cache-Control": "no-store"})

    access = None if settings.ota_public else access_for(settings.data_dir / "ota", settings.ota_token_ttl_s)

    async def is_operator(token: str) -> bool:
        def check() -> bool:
            with Session(app.state.engine) as session:
                try:
                    authenticate_operator(session=session, token=token)
                except AuthError:
                    return False
                return True

        return await asyncio.to_thread(check)

    static = RepositoryFiles(ota.store, ota.repo.prefix)
    guarded = GuardedRepository(static, access=access, is_operator=is_operator, now_s=time.time)
    app.mount("/ota", guarded, name="ota")
    return ota
