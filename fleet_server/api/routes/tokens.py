"""Bootstrap tokens (devices) and operator tokens (people, scripts)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, status
from pydantic import BaseModel, Field

from fleet_server.api.deps import Admin, Operator, SessionDep
from fleet_server.api.params import Labels, NoNul
from fleet_server.crud import tokens as crud
from fleet_server.models import (
    BootstrapToken,
    BootstrapTokenCreate,
    BootstrapTokenCreated,
    BootstrapTokenPublic,
    as_utc,
)
from fleet_server.security import Role

router = APIRouter(tags=["tokens"])


def _public(row: BootstrapToken) -> BootstrapTokenPublic:
    return BootstrapTokenPublic(
        id=row.id,
        labels=row.labels,
        profile=row.profile,
        created_by=row.created_by,
        created_at=as_utc(row.created_at),
        expires_at=as_utc(row.expires_at),
        used_at=as_utc(row.used_at),
        used_by_device=row.used_by_device,
    )


class BootstrapTokenRequest(BaseModel):
    """What a device enrolled with the token gets: labels, and the only profile it may claim."""

    labels: Labels = Field(default_factory=dict)
    profile: Annotated[str, Field(max_length=64, pattern=NoNul)] = ""  # "" = any profile
    ttl_s: Annotated[int, Field(ge=60, le=30 * 24 * 3600)] = 24 * 3600


@router.post("/bootstrap-tokens", response_model=BootstrapTokenCreated, status_code=status.HTTP_201_CREATED)
def create_bootstrap_token(
    body: BootstrapTokenRequest, session: SessionDep, op: Operator
) -> BootstrapTokenCreated:
    spec = BootstrapTokenCreate(labels=body.labels, profile=body.profile, ttl_s=body.ttl_s)
    row, token = crud.create_bootstrap_token(session=session, spec=spec, created_by=op.name)
    return BootstrapTokenCreated(**_public(row).model_dump(), token=token)


@router.get("/bootstrap-tokens", response_model=list[BootstrapTokenPublic])
def list_bootstrap_tokens(session: SessionDep, _: Operator) -> list[BootstrapTokenPublic]:
    return [_public(r) for r in crud.list_bootstrap_tokens(session=session)]


class OperatorTokenCreate(BaseModel):
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=NoNul)]
    role: Role = Role.VIEWER


class OperatorTokenCreated(BaseModel):
    id: str
    name: str
    role: Role
    token: str


@router.post("/operator-tokens", response_model=OperatorTokenCreated, status_code=status.HTTP_201_CREATED)
def create_operator_token(body: OperatorTokenCreate, session: SessionDep, _: Admin) -> OperatorTokenCreated:
    row, token = crud.create_operator_token(session=session, name=body.name, role=body.role)
    return OperatorTokenCreated(id=row.id, name=row.name, role=Role(row.role), token=token)
