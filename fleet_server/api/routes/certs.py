"""Device certificate routes: `POST /devices/{device_id}/revoke` (operator role).

The caller's contract (operator_cli `edgeloop devices revoke ID`): JSON body {"reason": "..."},
200 with the device (status "revoked", revoked_at set) also when it was already revoked, 404 for
an unknown id. The work is `app.state.revoker` (certs/revocation.py): the database change, the audit
entry, then the CRL and the session kicks.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from fleet_server.api.deps import Operator, RegistryDep
from fleet_server.api.errors import NOT_FOUND
from fleet_server.api.params import DeviceIdPath, NoNul
from fleet_server.audit.port import operator_actor
from fleet_server.certs.revocation import Revoker
from fleet_server.models import DevicePublic, as_utc, device_public

router = APIRouter(prefix="/devices", tags=["devices"])


class RevokeRequest(BaseModel):
    reason: Annotated[str, Field(max_length=256, pattern=NoNul)] = ""


@router.post("/{device_id}/revoke", response_model=DevicePublic, responses=NOT_FOUND)
async def revoke_device(
    device_id: DeviceIdPath, body: RevokeRequest, request: Request, registry: RegistryDep, op: Operator
) -> DevicePublic:
    revoker: Revoker = request.app.state.revoker
    done = await revoker.revoke(device_id, actor=operator_actor(op), reason=body.reason)
    public = device_public(done.device, registry.online())
    public.revoked_at = as_utc(done.device.revoked_at)
    public.cert_not_after = as_utc(done.device.cert_not_after)
    return public
