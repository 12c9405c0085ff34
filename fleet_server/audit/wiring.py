"""Builds the audit log for a server process and signs its head on a timer and at shutdown.

With several replicas the timer runs only on the holder of the `audit-head-signer` lease (one
signature per interval fleet-wide instead of one per replica); every replica still signs once at
its own stop, covering what it appended last. Signing is idempotent (a head already signed with
this key is skipped), so a brief overlap at a takeover costs nothing and needs no fencing.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from fleet_server.audit.keys import AuditKey
from fleet_server.audit.store import SqlAuditLog
from fleet_server.coordination.leases import LeaseGrant, LeaseStore, Singleton

logger = logging.getLogger(__name__)

SIGN_INTERVAL_S = 60.0
LEASE = "audit-head-signer"


def key_path(data_dir: Path) -> Path:
    return data_dir / "audit" / "head_key.pem"


class HeadSigner:
    """Calls `log.sign_head()` every `interval_s` seconds on a daemon thread, and once on `stop()`.

    With `leases`, the timer signs only while this replica (`holder`) holds the `audit-head-signer`
    lease; `timed_signs` counts the timer's attempts (tests, metrics).
    """

    def __init__(
        self,
        log: SqlAuditLog,
        interval_s: float = SIGN_INTERVAL_S,
        *,
        leases: LeaseStore | None = None,
        holder: str = "",
        lease_ttl_s: float = 6.0,
    ) -> None:
        self.log = log
        self._log = log
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._held = threading.Event()
        self._lease: Singleton | None = None
        if leases is not None:
            poll_s = min(1.0, lease_ttl_s / 3)
            self._lease = Singleton(leases, LEASE, holder, ttl_s=lease_ttl_s, poll_s=poll_s,
                                    on_acquired=self._on_acquired, on_lost=self._held.clear)  # fmt: skip
        else:
            self._held.set()
        self.timed_signs = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="audit-head-signer", daemon=True)
        self._thread.start()
        if self._lease is not None:
            self._lease.start()

    def _on_acquired(self, _grant: LeaseGrant) -> None:
        self._held.set()

    def _sign(self) -> None:
        try:
            self._log.sign_head()
        except SQLAlchemyError as err:
            logger.error("audit head not signed (database): %s", err)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            if self._held.is_set():
                self.timed_signs += 1
                self._sign()

    def stop(self) -> None:
        if self._lease is not None:
            self._lease.stop()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._sign()


def build_audit(
    *,
    engine: Engine,
    data_dir: Path,
    interval_s: float = SIGN_INTERVAL_S,
    leases: LeaseStore | None = None,
    holder: str = "",
    lease_ttl_s: float = 6.0,
) -> HeadSigner:
    """The audit log of this process (`signer.log`) with its head signer started; with `leases`,
    the timed signing runs on the `audit-head-signer` lease holder only."""
    log = SqlAuditLog(engine, AuditKey.load_or_create(key_path(data_dir)))
    signer = HeadSigner(log, interval_s, leases=leases, holder=holder, lease_ttl_s=lease_ttl_s)
    signer.start()
    return signer
