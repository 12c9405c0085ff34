"""This replica's identity and heartbeat (`server_replica` rows), and which replicas are alive.

`ReplicaHeartbeat` upserts this replica's row every `interval_s` on a daemon thread; a replica
whose heartbeat is older than `ttl_s` is dead, and so are the gRPC sessions it held (the presence
rows naming it). A graceful stop deletes its row and its gRPC presence rows at once. Rows of
replicas dead for `reap_after_s` are deleted by whichever live replica notices, with their gRPC
presence rows, so the tables do not grow with restarts.

Does not write presence rows for sessions (the session registry does) or decide who is online.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from fleet_server import __version__
from fleet_server.coordination.leases import db_now
from fleet_server.coordination.models import DevicePresence, ServerReplica

logger = logging.getLogger(__name__)

_R = ServerReplica.__table__  # type: ignore[attr-defined]
_P = DevicePresence.__table__  # type: ignore[attr-defined]


def replica_id_for(settings: Any) -> str:
    """`settings.replica_id`, or "<hostname>-<pid>-<4 random hex>" when it is empty."""
    configured = str(getattr(settings, "replica_id", "") or "")
    return configured or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


class ReplicaHeartbeat:
    """Keeps this replica's `server_replica` row fresh; `live_replicas()` reads everyone's."""

    def __init__(
        self,
        engine: Engine,
        replica_id: str,
        *,
        interval_s: float = 2.0,
        ttl_s: float = 6.0,
        reap_after_s: float | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        """`clock` None: the database's clock on PostgreSQL (replicas need not agree on the time),
        this host's on SQLite."""
        self._engine, self.replica_id = engine, replica_id
        self._interval_s, self._ttl_s = interval_s, ttl_s
        self._reap_after_s = reap_after_s if reap_after_s is not None else max(60.0, 10 * ttl_s)
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.beats = 0

    def start(self) -> None:
        """Write the first heartbeat now (a database error here propagates), then keep beating."""
        self.beat()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="replica-heartbeat", daemon=True)
        self._thread.start()
        logger.info(
            "replica started id=%s interval_s=%.1f ttl_s=%.1f", self.replica_id, self._interval_s, self._ttl_s
        )

    def stop(self) -> None:
        """Stop beating; delete this replica's row and its gRPC presence rows."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._interval_s + 5)
            self._thread = None
        try:
            with self._engine.begin() as conn:
                conn.execute(delete(_P).where(_P.c.replica_id == self.replica_id))
                conn.execute(delete(_R).where(_R.c.id == self.replica_id))
        except SQLAlchemyError as err:
            logger.warning(
                "replica row not removed id=%s (it expires in %.0fs): %s", self.replica_id, self._ttl_s, err
            )
        logger.info("replica stopped id=%s", self.replica_id)

    def beat(self) -> None:
        with self._engine.begin() as conn:
            now = db_now(conn, self._clock)
            _upsert(conn, self.replica_id, now)
            if self.beats % 10 == 0:
                self._reap(conn, now)
        self.beats += 1

    def live_replicas(self) -> set[str]:
        """Ids of replicas whose heartbeat is younger than the replica TTL (this one included)."""
        with self._engine.connect() as conn:
            cutoff = db_now(conn, self._clock) - timedelta(seconds=self._ttl_s)
            return set(conn.execute(select(_R.c.id).where(_R.c.heartbeat_at > cutoff)).scalars())

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.beat()
            except SQLAlchemyError as err:
                logger.warning("replica heartbeat failed id=%s: %s", self.replica_id, err)

    def _reap(self, conn: Connection, now: datetime) -> None:
        dead = select(_R.c.id).where(_R.c.heartbeat_at < now - timedelta(seconds=self._reap_after_s))
        gone = conn.execute(delete(_P).where(_P.c.replica_id.in_(dead))).rowcount
        reaped = conn.execute(delete(_R).where(_R.c.id.in_(dead))).rowcount
        if reaped:
            logger.info("reaped dead replicas=%d presence_rows=%d", reaped, gone)


def _upsert(conn: Connection, replica_id: str, now: datetime) -> None:
    done = conn.execute(update(_R).where(_R.c.id == replica_id).values(heartbeat_at=now)).rowcount
    if done:
        return
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = insert(_R).values(
        id=replica_id, hostname=socket.gethostname(), pid=os.getpid(), version=__version__[:64],
        started_at=now, heartbeat_at=now,
    )  # fmt: skip
    conn.execute(stmt.on_conflict_do_update(index_elements=["id"], set_={"heartbeat_at": now}))
