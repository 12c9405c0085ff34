"""Readiness: may this server take traffic? (`GET /readyz`; `/healthz` stays liveness.)

Owns the checks and their verdict: the database answers, its schema is at the newest migration,
the key material the server signs and serves with is on disk (fleet CA and server certificate,
the OTA repository's online signing keys, the audit head key), the artifact store answers and
holds the repository (filesystem or S3: a replica cut off from the bucket cannot serve updates),
and both gRPC servers have started and accept connections. Each check is a small blocking
function returning a `Check`; `run_checks` runs them in a worker thread under one deadline. Does
not repair anything.
"""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from fleet_server.errors import NotFoundError
from fleet_server.logsafe import text as safe_text
from fleet_server.migrate import current_revision, head_revision

DEADLINE_S = 3.0
CONNECT_TIMEOUT_S = 1.0
ONLINE_OTA_ROLES = ("targets", "snapshot", "timestamp", "director")
# A server bound to every interface is probed on loopback.
_WILDCARD_TO_LOOPBACK = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}  # noqa: S104


@dataclass(frozen=True)
class Check:
    ok: bool
    detail: str


@dataclass
class Serving:
    """Set by the observability middleware from the ASGI lifespan: startup complete (both gRPC
    servers were started in it) and not yet shutting down."""

    started: bool = False
    stopping: bool = False


@functools.cache
def _head() -> str:
    return head_revision()


def database(engine: Engine) -> Check:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as err:
        return Check(False, f"unreachable: {_reason(err)}")
    return Check(True, engine.dialect.name)


def migrations(engine: Engine) -> Check:
    try:
        current = current_revision(engine)
    except SQLAlchemyError as err:
        return Check(False, f"revision unreadable: {_reason(err)}")
    head = _head()
    if current != head:
        return Check(
            False, f"schema at {current or 'none'}, code expects {head}; run `edgeloop-server migrate`"
        )
    return Check(True, f"at head {head}")


def keys(data_dir: Path, pki_dir: Path, ota_uris: Mapping[str, Mapping[str, str]]) -> Check:
    """Files the running server needs; `ota_uris` is role -> {keyid: private key URI}."""
    missing = [
        str(p)
        for p in (
            pki_dir / "ca.pem",
            pki_dir / "ca.key",
            pki_dir / "server.pem",
            pki_dir / "server.key",
            data_dir / "audit" / "head_key.pem",
            data_dir / "ota" / "keys" / "keys.json",
        )
        if not p.is_file()
    ]
    for role in ONLINE_OTA_ROLES:
        uris = ota_uris.get(role, {})
        if not uris:
            missing.append(f"OTA {role} signing key (no private key URI)")
        for uri in uris.values():
            if uri.startswith("file2:") and not Path(uri.removeprefix("file2:")).is_file():
                missing.append(f"OTA {role} key {uri.removeprefix('file2:')}")
            # other schemes (KMS, HSM) are not probed here: a signing attempt reports them
    if missing:
        return Check(False, "missing: " + ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else ""))
    return Check(True, "fleet CA, server certificate, OTA signing keys, audit key")


class StoreProbe(Protocol):
    def describe(self) -> str: ...
    def stat(self, key: str) -> object: ...


def artifacts(store: StoreProbe, timestamp_key: str) -> Check:
    """The store answers and holds the signed repository's `timestamp.json`."""
    try:
        store.stat(timestamp_key)
    except NotFoundError:
        return Check(False, f"{store.describe()}: no {timestamp_key} (repository not initialized)")
    except Exception as err:  # unreachable, refused, timed out: not ready, with the reason
        return Check(False, f"{store.describe()}: {_reason(err)}")
    return Check(True, store.describe())


def grpc_servers(serving: Serving, host: str, ports: Mapping[str, int]) -> Check:
    if not serving.started:
        return Check(False, "not started")
    if serving.stopping:
        return Check(False, "shutting down")
    target = _WILDCARD_TO_LOOPBACK.get(host, host)
    down = []
    for name, port in sorted(ports.items()):
        try:
            socket.create_connection((target, port), timeout=CONNECT_TIMEOUT_S).close()
        except OSError as err:
            down.append(f"{name} port {port}: {err.strerror or type(err).__name__}")
    if down:
        return Check(False, "not accepting connections: " + "; ".join(down))
    return Check(True, ", ".join(f"{name} :{port}" for name, port in sorted(ports.items())))


CheckFn = Callable[[], Check]


async def run_checks(checks: Mapping[str, CheckFn], deadline_s: float = DEADLINE_S) -> dict[str, Check]:
    """Run every check in one worker thread; a check still running at the deadline fails."""
    results: dict[str, Check] = {}

    def run_all() -> None:
        for name, fn in checks.items():
            try:
                results[name] = fn()
            except Exception as err:  # a check that breaks is a failing check, never a 500
                results[name] = Check(False, f"check failed: {_reason(err)}")

    try:
        await asyncio.wait_for(asyncio.to_thread(run_all), deadline_s)
    except TimeoutError:
        pass
    return {name: results.get(name, Check(False, f"no answer within {deadline_s:g} s")) for name in checks}


def _reason(err: BaseException) -> str:
    orig = getattr(err, "orig", None) or err
    lines = str(orig).strip().splitlines()
    return f"{type(orig).__name__}: {safe_text(lines[0] if lines else '', 160)}"
