"""The operator CLI's REST client and its exit codes, grouped by what the caller should do next.

Owns `Api` (one httpx client per command, bearer token, optional private CA), `ApiError` (an
error answer, carrying the exit code its status maps to), `UsageError`/`CliError` (a command that
cannot run as given) and the exit code table printed in `edgeloop --help`. Does not own the
commands (the `*/cli.py` modules) nor where the server URL and token come from (cliconfig.py).

The codes follow the server's error tree (fleet_server.errors): InvalidRequestError is 2,
AuthError and ForbiddenError 3, NotFoundError 4, ConflictError 5. USAGE is 2 as for argparse and
`edgeloop-server`; the daemon's own codes (30-49) stay the daemon's.
"""

from __future__ import annotations

import json
import ssl
from enum import IntEnum
from typing import Any

import httpx


class CliExit(IntEnum):
    """`edgeloop` exit codes: each names what the caller should do next."""

    OK = 0
    UNEXPECTED = 1  # a bug or an unexpected server answer (500): report it, with EDGELOOP_DEBUG=1
    USAGE = 2  # bad arguments or config file, or the server refused the request as invalid: fix it
    AUTH = 3  # token missing, wrong, expired or revoked (401), or the role may not do this (403)
    NOT_FOUND = 4  # the device, rollout, run or token named does not exist (404): check the id
    CONFLICT = 5  # its state forbids the change (409), rate limited (429), server busy (503): retry later
    UNREACHABLE = 6  # no connection, timeout, TLS failure, proxy 502/504: check the URL, network, CA
    CHECK_FAILED = 7  # the command ran and the answer is bad (audit chain broken, watch ended failed)
    INTERRUPTED = 130  # Ctrl-C


EXIT_CODES_HELP = """exit codes (what to do next):
  0  ok
  1  unexpected error (a bug, or a server 500): report it; EDGELOOP_DEBUG=1 shows the traceback
  2  usage: bad arguments or config file, or the server refused the request as invalid (400/413/422)
  3  auth: token missing, wrong, expired or revoked (401), or your role may not do this (403)
  4  not found: the device, rollout, run, token or version named does not exist (404)
  5  conflict or busy: the current state forbids it (409), rate limited (429) or server busy (503);
     look at the state, or retry later
  6  server unreachable: connection refused, timeout, TLS/CA failure, proxy 502/504
  7  check failed: the command ran and the answer is bad (audit chain broken,
     `rollout watch --exit-status` ended in a state other than completed)
  130 interrupted (Ctrl-C)"""

_BY_STATUS = {
    400: CliExit.USAGE,
    405: CliExit.USAGE,
    413: CliExit.USAGE,
    422: CliExit.USAGE,
    401: CliExit.AUTH,
    403: CliExit.AUTH,
    404: CliExit.NOT_FOUND,
    410: CliExit.NOT_FOUND,
    409: CliExit.CONFLICT,
    423: CliExit.CONFLICT,
    429: CliExit.CONFLICT,
    503: CliExit.CONFLICT,
    502: CliExit.UNREACHABLE,
    504: CliExit.UNREACHABLE,
}


def exit_code_for_status(status: int) -> CliExit:
    """The exit code of an HTTP error answer (any other 4xx is a usage error, any other 5xx a bug)."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return CliExit.USAGE if 400 <= status < 500 else CliExit.UNEXPECTED


class CliError(Exception):
    """A command that cannot complete, with the exit code that says why (message without traceback)."""

    def __init__(self, message: str, code: CliExit = CliExit.UNEXPECTED) -> None:
        super().__init__(message)
        self.code = code


class UsageError(SystemExit):
    """Bad arguments found after parsing (e.g. `key=value` expected): exit 2 with the message.

    A SystemExit so that a handler called outside `main` still stops the program with the message.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ApiError(Exception):
    """An error answer of the REST API: its status, the server's `detail` and `error` name."""

    def __init__(self, status: int, detail: str, error: str = "") -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail
        self.error = error

    @property
    def exit_code(self) -> CliExit:
        return exit_code_for_status(self.status)


class ApiTimeoutError(ConnectionError, TimeoutError):
    """No progress within the idle timeout: nothing sent or received for that long."""


class Streamed:
    """Returned by a command that already wrote its JSON (one object per line) to stdout."""


STREAMED = Streamed()


def tls_verify(ca_file: str | None) -> ssl.SSLContext | bool:
    """httpx's `verify` for a private CA file (the system store when none is given)."""
    if not ca_file:
        return True
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as err:
        raise CliError(f"cannot load CA file {ca_file}: {err}", CliExit.USAGE) from err


class Api:
    """The REST client of every command.

    `timeout_s` bounds each wait for progress, never a whole request: httpx applies its read and
    write timeouts per operation (one chunk sent, the next bytes received), so a large upload on a
    slow link that keeps moving never times out, and a stalled one fails after `timeout_s`. A call
    that waits on server work (e.g. signing a release) passes its own `timeout=`.
    """

    def __init__(
        self, base_url: str, token: str, timeout_s: float = 30.0, ca_file: str | None = None
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        timeout = httpx.Timeout(connect=10.0, read=timeout_s, write=timeout_s, pool=10.0)
        self._client = httpx.Client(
            base_url=base_url.rstrip("/") + "/api/v1",
            headers=headers,
            timeout=timeout,
            verify=tls_verify(ca_file),
        )

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self._client.request(method, path, **kwargs)
        except httpx.TimeoutException as err:
            raise ApiTimeoutError(
                f"{method} {path}: no progress from {self._client.base_url} within the timeout ({err!r})"
            ) from err
        except httpx.TransportError as err:
            raise ConnectionError(f"cannot reach fleet server at {self._client.base_url}: {err}") from err
        if resp.status_code >= 400:
            raise error_from(resp)
        try:
            return resp.json()
        except ValueError as err:
            where = f"{method} {self._client.base_url}{path}"
            raise CliError(
                f"{where} answered {resp.status_code} with no JSON: is --server the fleet server?",
                CliExit.UNEXPECTED,
            ) from err


def error_from(resp: httpx.Response) -> ApiError:
    """An `ApiError` from an error answer: the API's `{"detail", "error"}` or, from a proxy, its text."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        text = resp.text.strip()[:300] or resp.reason_phrase
        return ApiError(resp.status_code, text)
    detail = body.get("detail", resp.text)
    detail = detail if isinstance(detail, str) else json.dumps(detail)
    return ApiError(resp.status_code, detail, str(body.get("error", "")))
