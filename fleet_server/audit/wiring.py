"""Builds the audit log for a server process and signs its head on a timer and at shutdown."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from fleet_server.audit.keys import AuditKey
from fleet_server.audit.store import SqlAuditLog

logger = logging.getLogger(__name__)

SIGN_INTERVAL_S = 60.0


def key_path(data_dir: Path) -> Path:
    return data_dir / "audit" / "head_key.pem"


class HeadSigner:
    """Calls `log.sign_head()` every `interval_s` seconds on a daemon thread, and once on `stop()`."""

    def __init__(self, log: SqlAuditLog, interval_s: float = SIGN_INTERVAL_S) -> None:
        self.log = log
        self._log = log
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="audit-head-signer", daemon=True)
        self._thread.start()

    def _sign(self) -> None:
        try:
            self._log.sign_head()
        except SQLAlchemyError as err:
            logger.error("audit head not signed (database): %s", err)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._sign()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._sign()


def build_audit(*, engine: Engine, data_dir: Path, interval_s: float = SIGN_INTERVAL_S) -> HeadSigner:
    """The audit log of this process (`signer.log`) with its head signer started."""
    log = SqlAuditLog(engine, AuditKey.load_or_create(key_path(data_dir)))
    signer = HeadSigner(log, interval_s)
    signer.start()
    return signer
