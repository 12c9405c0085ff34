"""FastAPI dependencies as `Annotated` aliases, so routes read like prose.

Also owns the per-operator-token rate limit of the REST API (`OperatorRateLimiter`, one token
bucket per token id, checked right after authentication: 429 with Retry-After), and the
throttled `last_used_at` mark of every authenticated request.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlmodel import Session

from fleet_server.crud.tokens import authenticate_operator, mark_used
from fleet_server.errors import AuthError
from fleet_server.grpc_api.servicer import SessionRegistry
from fleet_server.models import OperatorToken
from fleet_server.ratelimit import TokenBucket
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


class OperatorRateLimiter:
    """One token bucket per operator token id (thread-safe: sync routes run in a thread pool).

    Holds at most `max_tokens` buckets, least recently used evicted first; an evicted token
    starts again with a full burst, which only ever errs towards allowing.
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: float,
        clock: Callable[[], float] = time.monotonic,
        max_tokens: int = 10_000,
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(f"rate_per_s must be > 0 and burst >= 1, got {rate_per_s}, {burst}")
        self.rate_per_s, self.burst = rate_per_s, burst
        self._clock, self._max = clock, max_tokens
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, token_id: str) -> int:
        """0 when this request may go ahead (and it is counted), else whole seconds to wait."""
        with self._lock:
            bucket = self._buckets.pop(token_id, None) or TokenBucket(self.rate_per_s, self.burst)
            self._buckets[token_id] = bucket
            if len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
            if bucket.allow(self._clock()):
                return 0
            return max(1, math.ceil((1.0 - bucket.tokens) / self.rate_per_s))


_limiter_lock = threading.Lock()


def get_rate_limiter(request: Request) -> OperatorRateLimiter:
    """The app's limiter (`app.state.operator_limiter`), built from settings on first use."""
    state = request.app.state
    limiter: OperatorRateLimiter | None = getattr(state, "operator_limiter", None)
    if limiter is None:
        with _limiter_lock:
            limiter = getattr(state, "operator_limiter", None)
            if limiter is None:
                settings = get_settings_dep(request)
                limiter = OperatorRateLimiter(settings.operator_rate_per_s, float(settings.operator_burst))
                state.operator_limiter = limiter
    return limiter


def get_operator(
    request: Request,
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
        operator = authenticate_operator(session=session, token=creds.credentials)
    except AuthError as err:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, str(err), headers={"WWW-Authenticate": "Bearer"}
        ) from err
    limiter = get_rate_limiter(request)
    wait_s = limiter.retry_after(operator.id)
    if wait_s:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"rate limit exceeded for operator token {operator.id} "
            f"({limiter.rate_per_s:g}/s, burst {limiter.burst:g}); retry after {wait_s}s",
            headers={"Retry-After": str(wait_s)},
        )
    mark_used(session=session, row=operator)
    return operator


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
