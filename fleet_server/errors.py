"""Fleet-server error tree, mapped once to HTTP (main.py) and once to gRPC status (grpc_api).

FleetError
├── NotFoundError        the thing named does not exist            → 404 / NOT_FOUND
├── ConflictError        it exists / state forbids the change      → 409 / ALREADY_EXISTS
├── InvalidRequestError  the request is malformed or out of range  → 422 / INVALID_ARGUMENT
├── AuthError            credentials missing, wrong, used, expired → 401 / UNAUTHENTICATED
├── ForbiddenError       authenticated but not allowed             → 403 / PERMISSION_DENIED
└── ConfigError          the server cannot start as configured     → exit code 30
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Server exit codes live in 30-49 (agent 10-29, compiler 50-69)."""

    OK = 0
    USAGE = 2
    CONFIG = 30
    NOT_INITIALISED = 31
    DATABASE = 32
    API = 33


class FleetError(Exception):
    """Root of every error the fleet server raises on purpose."""


class NotFoundError(FleetError):
    pass


class ConflictError(FleetError):
    pass


class InvalidRequestError(FleetError):
    pass


class AuthError(FleetError):
    pass


class ForbiddenError(FleetError):
    pass


class ConfigError(FleetError):
    pass
