"""Registry REST routes: register versions, list and show them, set the release policy, approve.

Reads are for viewers; registering, policy and approval are operator actions. The compile job
runs in the registry's worker, so registering returns at once with status `registered`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from fleet_server.api.deps import Operator, SessionDep, Viewer
from fleet_server.api.errors import CONFLICT, NOT_FOUND
from fleet_server.api.params import IdQuery, NamePath, VersionNo
from fleet_server.audit.port import operator_actor
from fleet_server.registry.models import ModelVersion, RegisteredModel
from fleet_server.registry.schemas import Approval, PolicyUpdate, VersionCreate, VersionPublic
from fleet_server.registry.service import ModelRegistry

router = APIRouter(prefix="/models", tags=["registry"])


def get_models(request: Request) -> ModelRegistry:
    models: ModelRegistry = request.app.state.models
    return models


ModelsDep = Annotated[ModelRegistry, Depends(get_models)]


@router.post("", response_model=VersionPublic, status_code=201, responses=NOT_FOUND | CONFLICT)
def register_version(
    spec: VersionCreate, session: SessionDep, models: ModelsDep, operator: Operator
) -> ModelVersion:
    return models.register(session, spec, created_by=operator.name, actor=operator_actor(operator))


@router.get("", response_model=list[VersionPublic])
def list_versions(
    session: SessionDep, models: ModelsDep, _: Viewer, name: IdQuery = None
) -> list[ModelVersion]:
    return list(models.versions(session, name))


@router.get("/{name}/versions/{version}", response_model=VersionPublic, responses=NOT_FOUND)
def show_version(
    name: NamePath, version: VersionNo, session: SessionDep, models: ModelsDep, _: Viewer
) -> ModelVersion:
    return models.get(session, name, version)


class PolicyPublic(BaseModel):
    name: str
    auto_release: bool


@router.put("/{name}/policy", response_model=PolicyPublic, responses=NOT_FOUND)
def set_policy(
    name: NamePath, body: PolicyUpdate, session: SessionDep, models: ModelsDep, _: Operator
) -> dict[str, object]:
    model: RegisteredModel = models.set_policy(session, name, auto_release=body.auto_release)
    return {"name": model.name, "auto_release": model.auto_release}


@router.post(
    "/{name}/versions/{version}/approve", response_model=VersionPublic, responses=NOT_FOUND | CONFLICT
)
def approve_version(
    name: NamePath,
    version: VersionNo,
    *,
    body: Approval,
    session: SessionDep,
    models: ModelsDep,
    operator: Operator,
) -> ModelVersion:
    return models.approve(
        session, name, version, devices=body.devices, created_by=operator.name, actor=operator_actor(operator)
    )
