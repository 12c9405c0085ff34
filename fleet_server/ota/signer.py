"""The TUF signer across replicas: one writer lock on PostgreSQL and the `tuf-signer` duty.

Two things, both optional for a single server:

- `PgAdvisoryLock`: the repository's writer lock when replicas share PostgreSQL. Every repository
  write (publish, deploy, timestamp refresh, root install) holds ``pg_advisory_xact_lock`` on a
  connection of its own for the duration of the write, so replicas sign one at a time and rarely
  race. It is a lock, not a lease, on purpose: publishes and deploys run on whichever replica got
  the request, must not wait for a lease poll interval, and PostgreSQL queues the waiters and frees
  the lock when a holder's connection dies. Correctness does not rest on it: a writer that lost
  its connection (and so the lock) but still runs is fenced by the repository's commit, a
  put-if-absent of the next timestamp version (`metadata_store.py`), which it loses.
- `TimestampDuty`: the periodic timestamp/snapshot refresh runs only on the replica holding the
  `tuf-signer` lease (`coordination.leases.Singleton`), checked every `interval_s`; another replica
  takes over within the lease ttl + poll after the holder dies. The timestamp route refreshes on
  demand only on the holder.

Does not sign anything itself (`repository.py`) nor know HTTP.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, text

from fleet_server.coordination.leases import LeaseGrant, LeaseStore, Singleton
from fleet_server.models import utcnow
from fleet_server.ota.locks import OuterLock
from fleet_server.ota.releases import OtaService

logger = logging.getLogger(__name__)

LEASE = "tuf-signer"
LOCK_KEY = 0x6564676C6F6F7075  # pg advisory lock id of the OTA repository writer ("edgloopu")


class PgAdvisoryLock(OuterLock):
    """Re-entrant per thread; across processes ``pg_advisory_xact_lock(LOCK_KEY)`` held in an open
    transaction on a dedicated connection until the outermost exit (rolled back: releases it)."""

    def __init__(self, engine: Engine, *, key: int = LOCK_KEY, timeout_s: float = 60.0) -> None:
        super().__init__()
        self._engine = engine
        self._key = key
        self._timeout_ms = int(timeout_s * 1000)
        self._conn: Connection | None = None

    def _acquire_outer(self) -> None:
        conn = self._engine.connect()
        try:
            conn.execute(text(f"SET LOCAL lock_timeout = {self._timeout_ms}"))
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": self._key})
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _release_outer(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                conn.rollback()
            finally:
                conn.close()


class TimestampDuty:
    """Keeps timestamp and snapshot fresh, on the `tuf-signer` lease holder only."""

    def __init__(
        self,
        ota: OtaService,
        leases: LeaseStore,
        holder: str,
        *,
        ttl_s: float = 6.0,
        poll_s: float = 1.0,
        interval_s: float = 30.0,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self._ota = ota
        self._interval_s = interval_s
        self._now = now
        self._held = threading.Event()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.singleton = Singleton(
            leases, LEASE, holder, ttl_s=ttl_s, poll_s=poll_s, on_acquired=self._acquired, on_lost=self._lost
        )

    @property
    def held(self) -> bool:
        return self._held.is_set()

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="ota-timestamp-duty", daemon=True)
        self._thread.start()
        self.singleton.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self.singleton.stop()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _acquired(self, grant: LeaseGrant) -> None:
        self._held.set()
        self._wake.set()  # refresh now: the previous holder may have died long ago

    def _lost(self) -> None:
        self._held.clear()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval_s)
            self._wake.clear()
            if self._stop.is_set() or not self._held.is_set():
                continue
            try:
                self._ota.refresh_if_stale(self._now())
            except Exception:  # a store or database hiccup: try again next interval
                logger.exception("OTA timestamp refresh failed")


def coordinate(
    ota: OtaService, engine: Engine, *, holder: str, ttl_s: float = 6.0, **duty: Any
) -> TimestampDuty:
    """Make `ota` a replica: the PostgreSQL writer lock (when the database is PostgreSQL) and the
    started timestamp duty; the timestamp route refreshes only while this replica holds it."""
    if engine.dialect.name == "postgresql":
        ota.repo.lock = PgAdvisoryLock(engine)
    signer = TimestampDuty(ota, LeaseStore(engine), holder, ttl_s=ttl_s, **duty)
    ota.signs_timestamps_now = lambda: signer.held
    signer.start()
    logger.info("OTA signer coordinated holder=%s lock=%s", holder, type(ota.repo.lock).__name__)
    return signer
