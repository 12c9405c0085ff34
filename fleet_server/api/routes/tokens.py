"""Bootstrap tokens (devices) and operator tokens (people, scripts): REST routes.

Bootstrap tokens are minted, listed and revoked by operators; operator tokens are listed, minted,
rotated and revoked by admins only. A secret appears in exactly one response, the one that
creates it (create, rotate); lists never carry secrets or hashes. Every change is recorded in the
audit log with the acting token's identity (id, name, role) and never a secret. Thin: the rules
live in fleet_server.crud.tokens.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, status
from pydantic import BaseModel, Field

from fleet_server.api.deps import Admin, Operator, SessionDep
from fleet_server.api.errors import CONFLICT, NOT_FOUND
from fleet_server.api.params import Labels, NoNul
from fleet_server.audit.chain import Target
from fleet_server.audit.port import AuditRecorder, operator_actor, record_change
from fleet_server.crud import tokens as crud
from fleet_server.models import (
    BootstrapToken,
    BootstrapTokenCreate,
    BootstrapTokenCreated,
    BootstrapTokenPublic,
    OperatorToken,
    as_utc,
)
from fleet_server.security import Role

router = APIRouter(tags=["tokens"])

TokenIdPath = Annotated[str, Path(max_length=32, pattern=r"^[A-Za-z0-9_-]+$", description="token id")]
MAX_TTL_S = 365 * 24 * 3600
MAX_GRACE_S = 7 * 24 * 3600


def _audit(request: Request, op: OperatorToken, action: str, target: Target, details: dict[str, Any]) -> None:
    audit: AuditRecorder | None = getattr(request.app.state, "audit", None)
    if audit is not None:
        record_change(audit, operator_actor(op), action, target, details)


# ---------------------------------------------------------------- bootstrap tokens


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
        revoked_at=as_utc(row.revoked_at),
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


@router.post(
    "/bootstrap-tokens/{token_id}/revoke",
    response_model=BootstrapTokenPublic,
    responses=NOT_FOUND | CONFLICT,
)
def revoke_bootstrap_token(
    token_id: TokenIdPath, request: Request, session: SessionDep, op: Operator
) -> BootstrapTokenPublic:
    """No device can enroll with the token afterwards. 409 if it is already used or revoked."""
    row = crud.revoke_bootstrap_token(session=session, token_id=token_id)
    _audit(request, op, "bootstrap_token.revoked", Target("bootstrap_token", row.id), {})
    return _public(row)


# ---------------------------------------------------------------- operator tokens


class OperatorTokenCreate(BaseModel):
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=NoNul)]
    role: Role = Role.VIEWER
    ttl_s: Annotated[int | None, Field(ge=60, le=MAX_TTL_S)] = None  # None = never expires


class OperatorTokenPublic(BaseModel):
    """An operator token as listed: never its secret nor its hash."""

    id: str
    name: str
    role: Role
    created_by: str
    created_at: datetime | None
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None  # in the future: a rotation's grace period still running
    rotated_from: str


class OperatorTokenCreated(OperatorTokenPublic):
    token: str  # shown once; only its hash is stored


class OperatorTokenRotate(BaseModel):
    grace_s: Annotated[int, Field(ge=0, le=MAX_GRACE_S)] = 0  # the old token works this much longer


def _op_public(row: OperatorToken) -> OperatorTokenPublic:
    return OperatorTokenPublic(
        id=row.id,
        name=row.name,
        role=Role(row.role),
        created_by=row.created_by,
        created_at=as_utc(row.created_at),
        expires_at=as_utc(row.expires_at),
        last_used_at=as_utc(row.last_used_at),
        revoked_at=as_utc(row.revoked_at),
        rotated_from=row.rotated_from,
    )


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


@router.get("/operator-tokens", response_model=list[OperatorTokenPublic])
def list_operator_tokens(session: SessionDep, _: Admin) -> list[OperatorTokenPublic]:
    return [_op_public(r) for r in crud.list_operator_tokens(session=session)]


@router.post("/operator-tokens", response_model=OperatorTokenCreated, status_code=status.HTTP_201_CREATED)
def create_operator_token(
    body: OperatorTokenCreate, request: Request, session: SessionDep, op: Admin
) -> OperatorTokenCreated:
    row, token = crud.create_operator_token(
        session=session, name=body.name, role=body.role, created_by=op.name, ttl_s=body.ttl_s
    )
    details = {"name": row.name, "role": row.role, "expires_at": _iso(as_utc(row.expires_at))}
    _audit(request, op, "operator_token.created", Target("operator_token", row.id), details)
    return OperatorTokenCreated(**_op_public(row).model_dump(), token=token)


@router.post(
    "/operator-tokens/{token_id}/rotate",
    response_model=OperatorTokenCreated,
    status_code=status.HTTP_201_CREATED,
    responses=NOT_FOUND | CONFLICT,
)
def rotate_operator_token(
    token_id: TokenIdPath,
    request: Request,
    session: SessionDep,
    op: Admin,
    body: OperatorTokenRotate | None = None,
) -> OperatorTokenCreated:
    """A new secret with the same name and role; the old token stops working after `grace_s`."""
    grace_s = body.grace_s if body else 0
    new, token, old = crud.rotate_operator_token(
        session=session, token_id=token_id, actor=op, grace_s=grace_s
    )
    details = {
        "new_token": new.id,
        "grace_s": grace_s,
        "old_revoked_at": _iso(as_utc(old.revoked_at)),
    }
    _audit(request, op, "operator_token.rotated", Target("operator_token", old.id), details)
    return OperatorTokenCreated(**_op_public(new).model_dump(), token=token)


@router.post(
    "/operator-tokens/{token_id}/revoke",
    response_model=OperatorTokenPublic,
    responses=NOT_FOUND | CONFLICT,
)
def revoke_operator_token(
    token_id: TokenIdPath, request: Request, session: SessionDep, op: Admin
) -> OperatorTokenPublic:
    """Revoked at once: its next request is a 401. 409 for the last active admin token."""
    row = crud.revoke_operator_token(session=session, token_id=token_id, actor=op)
    details = {"name": row.name, "role": row.role}
    _audit(request, op, "operator_token.revoked", Target("operator_token", row.id), details)
    return _op_public(row)
