"""The one error shape of the REST API, its OpenAPI declarations and the handlers that produce it.

Every 4xx/5xx answer of the API is an `ErrorResponse`: ``{"detail": str, "error": str}``, where
`error` names what went wrong in the terms of `fleet_server.errors` (the caller decides what to
do next from it) and `detail` says why in words. Request-validation failures (422) carry the same
two fields plus `errors`, the list of offending fields. Owns the mapping of exceptions to status
codes; does not own the exceptions themselves (fleet_server.errors) nor which route raises what.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DataError, IntegrityError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from fleet_server.errors import (
    AuthError,
    ConflictError,
    FleetError,
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
)

logger = logging.getLogger(__name__)

_MAX_DETAIL = 2000
_MAX_LISTED = 10


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorResponse(BaseModel):
    """Body of every error answer of the API."""

    detail: str
    error: str
    errors: list[FieldError] | None = None  # only on request-validation 422s


_FLEET_STATUS: list[tuple[type[FleetError], int]] = [
    (NotFoundError, 404),
    (ConflictError, 409),
    (InvalidRequestError, 422),
    (AuthError, 401),
    (ForbiddenError, 403),
]
_STATUS_ERROR = {code: cls.__name__ for cls, code in _FLEET_STATUS} | {503: "UnavailableError"}


def _declare(code: int, description: str) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorResponse, "description": description}}


MALFORMED = _declare(400, "The body could not be parsed (e.g. not UTF-8)")
UNAUTHORIZED = _declare(401, "No, malformed, unknown or revoked operator token")
FORBIDDEN = _declare(403, "The token's role may not do this")
NOT_FOUND = _declare(404, "A named resource does not exist")
CONFLICT = _declare(409, "The resource's state forbids the change")
INVALID = _declare(422, "The request is malformed or out of range (`errors` lists the fields)")
UNAVAILABLE = _declare(503, "The database is unavailable; retry later")
TOO_LARGE = _declare(413, "The body is larger than allowed")

RATE_LIMITED = _declare(429, "Too many requests for this operator token; retry after Retry-After seconds")

COMMON = MALFORMED | UNAUTHORIZED | FORBIDDEN | INVALID | TOO_LARGE | RATE_LIMITED | UNAVAILABLE
"""Declared on every operation under /api/v1 (all need a token and touch the database)."""


def error_body(status: int, detail: str, error: str | None = None) -> dict[str, Any]:
    name = error or _STATUS_ERROR.get(status) or HTTPStatus(status).phrase.replace(" ", "") + "Error"
    return {"detail": detail[:_MAX_DETAIL], "error": name}


def _field_error(raw: dict[str, Any]) -> FieldError:
    loc = [p if isinstance(p, int) else str(p) for p in raw.get("loc", ())]
    return FieldError(loc=loc, msg=str(raw.get("msg", "")), type=str(raw.get("type", "")))


def validation_body(err: RequestValidationError) -> dict[str, Any]:
    """422 body: a readable summary in `detail` and the fields in `errors` (never the input)."""
    fields = [_field_error(e) for e in err.errors()]
    summary = "; ".join(f"{'.'.join(map(str, f.loc))}: {f.msg}" for f in fields[:_MAX_LISTED])
    if len(fields) > _MAX_LISTED:
        summary += f"; and {len(fields) - _MAX_LISTED} more"
    body = error_body(422, f"invalid request: {summary}", "InvalidRequestError")
    body["errors"] = [f.model_dump() for f in fields[:100]]
    return body


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception a request can raise to an `ErrorResponse`, in one place."""

    @app.exception_handler(FleetError)
    async def _fleet_error(_: Request, err: FleetError) -> JSONResponse:
        code = next((c for cls, c in _FLEET_STATUS if isinstance(err, cls)), 400)
        return JSONResponse(error_body(code, str(err), type(err).__name__), status_code=code)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(err.status_code, str(err.detail)), err.status_code, err.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse(validation_body(err), status_code=422)

    @app.exception_handler(OperationalError)
    async def _db_down(_: Request, err: OperationalError) -> JSONResponse:
        logger.error("database unavailable: %s", err.orig)
        return JSONResponse(error_body(503, "database unavailable; retry later"), status_code=503)

    # Safety nets: the schema bounds every input, so these mean a bound is missing somewhere.
    # The database's refusal is the caller's bad value or a lost race, not a server fault.
    @app.exception_handler(DataError)
    async def _db_refused(_: Request, err: DataError) -> JSONResponse:
        logger.warning("database refused a value: %s", err.orig)
        detail = "a value is out of range or not storable (e.g. too long, NUL character)"
        return JSONResponse(error_body(422, detail, "InvalidRequestError"), status_code=422)

    @app.exception_handler(IntegrityError)
    async def _db_conflict(_: Request, err: IntegrityError) -> JSONResponse:
        logger.warning("database integrity conflict: %s", err.orig)
        detail = "conflicts with existing data (duplicate or missing reference)"
        return JSONResponse(error_body(409, detail, "ConflictError"), status_code=409)
