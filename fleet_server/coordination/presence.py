"""Device presence in the database (`device_presence`): who is connected, over which transport,
through which replica, so that any replica answers "is it online?" for the whole fleet.

Writes are batched: `connected`/`disconnected` only record the change in memory (the latest per
device and transport wins), and a daemon thread flushes every `flush_s` in ONE transaction
(upserts with INSERT ... ON CONFLICT, deletes with IN lists), so 10,000 devices reconnecting after
a restart cost a handful of transactions, not 10,000. gRPC rows carry this replica's id and are
deleted only by it (a device that moved to another replica keeps that replica's row); MQTT rows
have no replica (the broker holds the session), so any replica that hears the device's status
writes them.

Reads are a snapshot refreshed by the same thread every `refresh_s`, or less often when the read
itself is slow (MAX_REFRESH_SHARE), never a query on the caller's thread (the event loop asks):
online = MQTT rows, plus gRPC rows of replicas whose heartbeat (`server_replica.heartbeat_at`,
written by replica.py) is within `replica_ttl_s`, plus our own rows.
Changes recorded here and not yet in the snapshot are overlaid, so a device that just connected
here is online at once. A dead replica's gRPC rows are deleted by whoever notices (every
`replica_ttl_s`); a live replica whose rows were deleted that way (a heartbeat hiccup) writes its
sessions again when its own row count falls short.

Does not own the heartbeat (replica.py), sessions (grpc_api/sessions.py) or MQTT status parsing
(mqtt/devices.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, and_, delete, exists, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from fleet_server.coordination.models import DevicePresence, ServerReplica
from fleet_server.models import utcnow

logger = logging.getLogger(__name__)

GRPC = "grpc"
MQTT = "mqtt"
_IN_CHUNK = 1000  # ids per IN list
MAX_REFRESH_SHARE = 0.05
"""The snapshot read takes at most this share of the time (about 20 ms per 10,000 online devices
on a loaded 2-core box: every `refresh_s` up to ~50,000 devices, less often beyond)."""
_P = DevicePresence.__table__  # type: ignore[attr-defined]
_R = ServerReplica.__table__  # type: ignore[attr-defined]


@dataclass
class PresenceStats:
    """Counters of the presence writer (served in /healthz and the metrics by the caller)."""

    flushes: int = 0  # write transactions committed
    upserts: int = 0
    deletes: int = 0
    refreshes: int = 0
    cleaned: int = 0  # gRPC rows of dead replicas deleted by this replica
    reasserted: int = 0  # times our own rows were found missing and written again
    errors: int = 0


@dataclass(frozen=True)
class _Change:
    seq: int
    transport: str
    present: bool


class Presence:
    """Batched presence writes and a fleet-wide online snapshot. Thread-safe."""

    def __init__(
        self,
        engine: Engine,
        replica_id: str,
        *,
        replica_ttl_s: float = 6.0,
        flush_s: float = 0.5,
        refresh_s: float = 1.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._engine = engine
        self.replica_id = replica_id
        self._ttl = timedelta(seconds=replica_ttl_s)
        self._flush_s = flush_s
        self._refresh_s = refresh_s
        self._check_s = replica_ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._seq = 0
        self._flushed_seq = 0
        self._pending: dict[tuple[str, str], _Change] = {}
        self._overlay: dict[str, _Change] = {}  # recorded here, maybe not in the snapshot yet
        self._snapshot: dict[str, str] = {}  # device id -> transport, as last read
        self._online: frozenset[str] | None = None  # cache of online(), reset on every change
        self._local_grpc: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stats = PresenceStats()

    # ------------------------------------------------------------ writes (any thread)

    def connected(self, device_id: str, transport: str) -> None:
        self._record(device_id, transport, True)

    def disconnected(self, device_id: str, transport: str) -> None:
        self._record(device_id, transport, False)

    def _record(self, device_id: str, transport: str, present: bool) -> None:
        with self._lock:
            self._seq += 1
            change = _Change(self._seq, transport, present)
            self._pending[(device_id, transport)] = change
            self._overlay[device_id] = change
            self._online = None
            if transport == GRPC:
                (self._local_grpc.add if present else self._local_grpc.discard)(device_id)

    # ------------------------------------------------------------ reads (any thread, no I/O)

    def online(self) -> frozenset[str]:
        """Every device online anywhere in the fleet, as of the last refresh plus our own changes."""
        with self._lock:
            if self._online is None:
                ids = set(self._snapshot)
                for device_id, change in self._overlay.items():
                    if change.present:
                        ids.add(device_id)
                    elif self._snapshot.get(device_id, change.transport) == change.transport:
                        ids.discard(device_id)
                self._online = frozenset(ids)
            return self._online

    def online_by(self, transport: str) -> set[str]:
        """The devices online anywhere over `transport` ("grpc" | "mqtt")."""
        return {d for d in self.online() if self.transport(d) == transport}

    def transport(self, device_id: str) -> str | None:
        """How the device is connected, fleet-wide ("grpc" | "mqtt"), or None when offline."""
        with self._lock:
            change = self._overlay.get(device_id)
            if change is not None:
                if change.present:
                    return change.transport
                if self._snapshot.get(device_id, change.transport) == change.transport:
                    return None
            return self._snapshot.get(device_id)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Delete rows left under our id by an earlier process (a replica restarted with a fixed
        `replica_id` holds no session yet), read the snapshot once (so the first answers are not
        empty), then run the thread."""
        try:
            with self._engine.begin() as conn:
                gone = conn.execute(delete(_P).where(_P.c.replica_id == self.replica_id)).rowcount
            if gone:
                logger.info(
                    "presence: deleted %d sessions left by an earlier run of %s", gone, self.replica_id
                )
            self.refresh()
        except SQLAlchemyError as err:
            self.stats.errors += 1
            logger.warning("presence: first read failed (retried by the thread): %s", err)
        self._thread = threading.Thread(target=self._run, name="presence", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and write what is pending. Our rows stay: the replica heartbeat's stop
        deletes them (replica.py), and a killed replica's rows die with its heartbeat."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        try:
            self.flush()
        except SQLAlchemyError as err:
            logger.warning("presence: last flush failed: %s", err)

    def _run(self) -> None:
        next_refresh = next_check = time.monotonic()
        while not self._stop.wait(self._flush_s):
            try:
                self.flush()
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + self._check_s
                    self.clean_and_check()
                if now >= next_refresh:
                    self.refresh()
                    took = time.monotonic() - now
                    next_refresh = now + max(self._refresh_s, took / MAX_REFRESH_SHARE)
            except SQLAlchemyError as err:
                self.stats.errors += 1
                logger.warning("presence: database error (retrying): %s", err)
            except Exception:
                self.stats.errors += 1
                logger.exception("presence: unexpected error (retrying)")

    # ------------------------------------------------------------ steps (the thread; tests call them)

    def flush(self) -> int:
        """Write the pending changes in one transaction; returns how many rows were written.
        On a database error the changes stay pending (newer ones recorded meanwhile win)."""
        with self._lock:
            pending, self._pending = self._pending, {}
            seq = self._seq
        if not pending:
            return 0
        try:
            with self._engine.begin() as conn:
                written = self._write(conn, pending)
        except SQLAlchemyError:
            with self._lock:
                for key, change in pending.items():
                    self._pending.setdefault(key, change)
            raise
        with self._lock:
            self._flushed_seq = max(self._flushed_seq, seq)
        self.stats.flushes += 1
        return written

    def _write(self, conn: Connection, pending: dict[tuple[str, str], _Change]) -> int:
        gone_grpc = [d for (d, t), c in pending.items() if not c.present and t == GRPC]
        gone_mqtt = [d for (d, t), c in pending.items() if not c.present and t != GRPC]
        latest: dict[str, _Change] = {}
        for (device_id, _), change in pending.items():
            if change.present and (device_id not in latest or latest[device_id].seq < change.seq):
                latest[device_id] = change
        for chunk in _chunks(gone_grpc):
            conn.execute(
                delete(_P).where(
                    _P.c.device_id.in_(chunk), _P.c.transport == GRPC, _P.c.replica_id == self.replica_id
                )
            )
        for chunk in _chunks(gone_mqtt):
            conn.execute(delete(_P).where(_P.c.device_id.in_(chunk), _P.c.transport == MQTT))
        if latest:
            now = self._clock()
            rows = [
                {
                    "device_id": device_id,
                    "transport": change.transport,
                    "replica_id": self.replica_id if change.transport == GRPC else None,
                    "since": now,
                }
                for device_id, change in latest.items()
            ]
            conn.execute(self._upsert(), rows)
        self.stats.upserts += len(latest)
        self.stats.deletes += len(gone_grpc) + len(gone_mqtt)
        return len(latest) + len(gone_grpc) + len(gone_mqtt)

    def _upsert(self) -> postgresql.Insert | sqlite.Insert:
        dialect = postgresql if self._engine.dialect.name == "postgresql" else sqlite
        stmt = dialect.insert(_P)
        upsert: postgresql.Insert | sqlite.Insert = stmt.on_conflict_do_update(
            index_elements=[_P.c.device_id],
            set_={
                "transport": stmt.excluded.transport,
                "replica_id": stmt.excluded.replica_id,
                "since": stmt.excluded.since,
            },
        )
        return upsert

    def refresh(self) -> None:
        """Read who is online fleet-wide (one query) and drop the overlay entries it covers."""
        with self._lock:
            covered = self._flushed_seq
        cutoff = self._clock() - self._ttl
        live = exists().where(_R.c.id == _P.c.replica_id, _R.c.heartbeat_at >= cutoff)
        query = select(_P.c.device_id, _P.c.transport).where(
            or_(_P.c.transport == MQTT, _P.c.replica_id == self.replica_id, live)
        )
        with self._engine.connect() as conn:
            snapshot = {str(d): str(t) for d, t in conn.execute(query)}
        with self._lock:
            self._snapshot = snapshot
            self._overlay = {d: c for d, c in self._overlay.items() if c.seq > covered}
            self._online = None
        self.stats.refreshes += 1

    def clean_and_check(self) -> None:
        """Delete the gRPC rows of dead replicas; write our sessions again if rows of ours are
        missing (another replica judged us dead during a heartbeat hiccup)."""
        cutoff = self._clock() - self._ttl
        live = exists().where(_R.c.id == _P.c.replica_id, _R.c.heartbeat_at >= cutoff)
        with self._engine.begin() as conn:
            cleaned = conn.execute(
                delete(_P).where(and_(_P.c.transport == GRPC, _P.c.replica_id != self.replica_id, ~live))
            ).rowcount
            mine = conn.execute(
                select(func.count()).select_from(_P).where(_P.c.replica_id == self.replica_id)
            ).scalar_one()
        self.stats.cleaned += max(cleaned or 0, 0)
        if cleaned:
            logger.info("presence: deleted %d sessions of dead replicas", cleaned)
        with self._lock:
            short = not self._pending and int(mine) < len(self._local_grpc)
            local = list(self._local_grpc) if short else []
        if short:
            logger.warning(
                "presence: %d of our %d sessions missing in the database; writing them again",
                len(local) - int(mine),
                len(local),
            )
            self.stats.reasserted += 1
            for device_id in local:
                with self._lock:
                    if device_id in self._local_grpc and (device_id, GRPC) not in self._pending:
                        self._seq += 1
                        self._pending[(device_id, GRPC)] = _Change(self._seq, GRPC, True)
            self.flush()


def _chunks(ids: list[str]) -> Iterable[list[str]]:
    for i in range(0, len(ids), _IN_CHUNK):
        yield ids[i : i + _IN_CHUNK]
