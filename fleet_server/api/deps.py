"""FastAPI dependencies as `Annotated` aliases, so routes read like prose."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlmodel import Session

from fleet_server.crud.tokens import authenticate_operator
from fleet_server.errors import AuthError
from fleet_server.grpc_api.servicer import SessionRegistry
from fleet_server.models import OperatorToken
from fleet_server.security import Role, role_allows
from fleet_server.settings import Settings

_bearer = HTTPBearer(auto_error=False)


def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def get_db(request: Request) -> Iterator[Session]:
    with Session(get_engine(request), expire_on_commit=False) as session:
        yield session


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_registry(request: Request) -> SessionRegistry:
    registry: SessionRegistry = request.app.state.registry
    return registry


SessionDep = Annotated[Session, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
RegistryDep = Annotated[SessionRegistry, Depends(get_registry)]


def get_operator(
    session: SessionDep,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> OperatorToken:
    if creds is None or creds.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing operator token (Authorization: Bearer op_...)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    try:
        return authenticate_operator(session=session, token=creds.credentials)
    except AuthError as err:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, str(err), headers={"WWW-Authenticate": "Bearer"}
        ) from err


CurrentOperator = Annotated[OperatorToken, Depends(get_operator)]


def require(role: Role) -> Callable[[OperatorToken], OperatorToken]:
    def _check(operator: CurrentOperator) -> OperatorToken:
        if not role_allows(operator.role, role):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, f"role {operator.role!r} may not do this; needs {role.value!r}"
            )
        return operator

    return _check


Viewer = Annotated[OperatorToken, Depends(require(Role.VIEWER))]
Operator = Annotated[OperatorToken, Depends(require(Role.OPERATOR))]
Admin = Annotated[OperatorToken, Depends(require(Role.ADMIN))]
