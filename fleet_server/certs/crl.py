"""Publishes the fleet CRL for the MQTT broker and makes the broker re-read it.

The CRL lists every serial in `revoked_certificate` (revoked devices and superseded certificates),
signed by the fleet CA. It is written atomically to the broker's `crlfile`, then the reload hook
runs: Mosquitto 2.0.11 re-reads `crlfile` on SIGHUP (measured: new TLS connections with a revoked
certificate fail right after; connections already open stay up, which is why revocation also kicks
sessions). An expired CRL makes OpenSSL refuse *every* client, so `refresh_forever` republishes it
long before `next_update`.

Does not decide what is revoked (revocation.py, renewal.py write the rows) or run the broker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import signal
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from sqlalchemy import Engine
from sqlmodel import Session, select

from fleet_server.models import RevokedCertificate, as_utc
from fleet_server.pki import FleetCA, RevokedSerial, write_atomic

logger = logging.getLogger(__name__)

NEXT_UPDATE_DAYS = 7
REFRESH_S = 24 * 3600.0
SOON_S = 2.0


class BrokerReload(Protocol):
    def __call__(self) -> None:
        """Make the broker re-read its CRL. Raises OSError (or subprocess errors) on failure."""
        ...


class PidfileReload:
    """SIGHUP the process whose pid is in `pidfile` (Mosquitto's `pid_file`, or a test's own)."""

    def __init__(self, pidfile: Path) -> None:
        self.pidfile = pidfile

    def __call__(self) -> None:
        os.kill(int(self.pidfile.read_text().strip()), signal.SIGHUP)


class CommandReload:
    """Run a command, e.g. `systemctl reload mosquitto` or `docker kill -s HUP mqtt`."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = list(argv)

    def __call__(self) -> None:
        subprocess.run(self.argv, check=True, capture_output=True, timeout=30)


def reload_hook(spec: str) -> BrokerReload | None:
    """ "" = none; "pidfile:/run/mosquitto.pid" = SIGHUP that pid; anything else = a command line."""
    spec = spec.strip()
    if not spec:
        return None
    if spec.startswith("pidfile:"):
        return PidfileReload(Path(spec.removeprefix("pidfile:")))
    return CommandReload(shlex.split(spec))


def revoked_serials(engine: Engine) -> list[RevokedSerial]:
    with Session(engine) as session:
        rows = session.exec(select(RevokedCertificate)).all()
    return [RevokedSerial(r.serial, as_utc(r.revoked_at) or datetime.now(UTC)) for r in rows]


def build_and_write(engine: Engine, ca: FleetCA, path: Path) -> int:
    """Write the current CRL to `path` atomically; returns how many serials it lists."""
    serials = revoked_serials(engine)
    write_atomic(path, ca.build_crl(serials, next_update_days=NEXT_UPDATE_DAYS), 0o644)
    return len(serials)


class CrlPublisher:
    """`await publisher.publish()` after every revocation; `refresh_forever()` as a background task."""

    def __init__(self, engine: Engine, ca: FleetCA, path: Path, reload: BrokerReload | None = None) -> None:
        self._engine, self._ca, self.path, self._reload = engine, ca, path, reload
        self._lock = asyncio.Lock()  # two revocations at once: one write, one reload after the other
        self._loop: asyncio.AbstractEventLoop | None = None
        self._soon: asyncio.Future[None] | None = None

    async def publish(self) -> int:
        """Rebuild the CRL and reload the broker. Raises what the write or the reload raised."""
        async with self._lock:
            count = await asyncio.to_thread(build_and_write, self._engine, self._ca, self.path)
            if self._reload is not None:
                await asyncio.to_thread(self._reload)
        logger.info(
            "CRL published path=%s serials=%d reloaded=%s", self.path, count, self._reload is not None
        )
        return count

    async def on_revoked(self, _device_id: str) -> None:
        await self.publish()

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def publish_soon(self) -> None:
        """Thread-safe: republish after `SOON_S` (the ingest flush that promoted a renewed certificate
        calls this inside its transaction; the delay lets it commit). Calls within the delay coalesce."""
        loop = self._loop
        if loop is None:
            logger.warning("CRL publish_soon before bind_loop: the superseded serial waits for the refresh")
            return
        loop.call_soon_threadsafe(self._schedule)

    def _schedule(self) -> None:
        if self._soon is None or self._soon.done():
            self._soon = asyncio.ensure_future(self._publish_later())

    async def _publish_later(self) -> None:
        await asyncio.sleep(SOON_S)
        try:
            await self.publish()
        except (OSError, subprocess.SubprocessError) as err:
            logger.error("CRL publish after certificate promotion failed: %s", err)

    async def refresh_forever(self, interval_s: float = REFRESH_S) -> None:
        while True:
            try:
                await self.publish()
            except (OSError, subprocess.SubprocessError) as err:
                logger.error("CRL refresh failed (the broker keeps the old one until next_update): %s", err)
            await asyncio.sleep(interval_s)
