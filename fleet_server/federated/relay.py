"""Task streams across replicas: where each device's `Tasks` stream is, and the task/result relay.

Behind an L4 balancer a device's `Tasks` stream, its `PushResult` calls and the run's aggregator
(the `federated-runner` lease holder) can be on three different replicas. `ReplicaLink` makes one
`FleetGrid` per replica act as one fleet-wide grid:

- `fl_attachment` says which replica holds each device's stream (written on attach, deleted on
  detach, one `epoch` per stream). `streams()` lists the streams held by *other live* replicas
  (heartbeat in `server_replica` younger than the replica TTL), so `get_node_ids` is fleet-wide.
- A task for a device streaming elsewhere becomes an `fl_relay` row addressed to that replica; a
  result pushed to a replica that did not send the task becomes a row addressed to the runner
  replica; a relayed task whose device left before delivery goes back as `offline`. Each write is
  followed by a bus wake-up (`edgeloop_fl`, `relay:<replica>`); every replica also drains its rows
  every `poll_s`, so a missed notification only delays delivery.

Payloads (serialized `TrainTask` / `TaskResult`) are bounded by `MAX_RELAY_BYTES`; a bigger task is
answered at once as if the device were offline. Rows are consumed (deleted) by the target; rows of
a dead target are deleted after `STALE_S` (checked every tenth of it).

Owns the two tables and the wake-ups. Does not decide what a task or result means (grid.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from sqlalchemy import Engine, delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from fleet_server.coordination.bus import Bus
from fleet_server.coordination.leases import db_now
from fleet_server.coordination.models import ServerReplica
from fleet_server.coordination.wakeloop import WakeLoop
from fleet_server.federated.models import FlAttachment, FlRelay
from fleet_server.models import utcnow
from protos.edgeloop.v1 import federated_pb2 as pb

logger = logging.getLogger(__name__)

CHANNEL = "edgeloop_fl"
MAX_RELAY_BYTES = 16 * 2**20  # per task or result; the test heads are a few KB
STALE_S = 600.0  # relay rows nobody consumed (a dead target) are deleted after this
BATCH = 64


@dataclass(frozen=True)
class Attachment:
    """A device's open task stream on `replica_id` (`epoch` changes at every re-attach)."""

    device_id: str
    replica_id: str
    epoch: str
    state: dict[str, float]


class RelaySink(Protocol):
    """What the link hands relayed rows to (FleetGrid)."""

    def deliver(self, device_id: str, task: pb.TrainTask, origin: str) -> None: ...

    def accept_result(self, device_id: str, result: pb.TaskResult) -> tuple[bool, str]: ...

    def fail_offline(self, task_id: str) -> None: ...


class ReplicaLink:
    """This replica's view of the fleet's task streams and its end of the relay."""

    def __init__(
        self,
        *,
        engine: Engine,
        replica_id: str,
        bus: Bus,
        runner: Callable[[], str | None],
        replica_ttl_s: float = 6.0,
        poll_s: float = 1.0,
    ) -> None:
        """`runner()` names the replica holding the runner lease (None when nobody holds it)."""
        self.replica_id = replica_id
        self._engine, self._bus, self._runner = engine, bus, runner
        self._ttl = replica_ttl_s
        self._sink: RelaySink | None = None
        self._worker = WakeLoop("fl-relay", self._drain_all, poll_s=poll_s)
        self._purged_at = 0.0
        self.relayed = {"task": 0, "result": 0, "offline": 0}
        bus.subscribe(CHANNEL, self._on_bus)
        bus.on_reconnect(self._worker.wake)

    # ------------------------------------------------------------------ directory

    def attached(self, device_id: str, epoch: str, state: dict[str, float], transport: str = "grpc") -> None:
        row = {"device_id": device_id, "replica_id": self.replica_id, "epoch": epoch,
               "transport": transport, "state": state, "since": utcnow()}  # fmt: skip
        with self._engine.begin() as conn:
            insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
            stmt = insert(FlAttachment).values(**row)
            conn.execute(stmt.on_conflict_do_update(index_elements=["device_id"], set_=row))

    def detached(self, device_id: str, epoch: str) -> None:
        with self._engine.begin() as conn:
            conn.execute(
                delete(FlAttachment).where(
                    col(FlAttachment.device_id) == device_id, col(FlAttachment.epoch) == epoch
                )
            )

    def streams(self) -> dict[str, Attachment]:
        """Streams held by other live replicas, by device id."""
        with Session(self._engine) as s:  # liveness by the database's clock, as the heartbeats are
            since = db_now(s.connection()) - timedelta(seconds=self._ttl)
            live = select(ServerReplica.id).where(col(ServerReplica.heartbeat_at) > since)
            query = select(FlAttachment).where(
                col(FlAttachment.replica_id) != self.replica_id, col(FlAttachment.replica_id).in_(live)
            )
            rows = s.exec(query).all()
        return {r.device_id: Attachment(r.device_id, r.replica_id, r.epoch, dict(r.state)) for r in rows}

    def forget_mine(self) -> None:
        """Shutdown: this replica's streams are closing."""
        with self._engine.begin() as conn:
            conn.execute(delete(FlAttachment).where(col(FlAttachment.replica_id) == self.replica_id))

    # ------------------------------------------------------------------ relay out

    def send_task(self, att: Attachment, task: pb.TrainTask) -> str:
        """Relay a task to the replica holding the device's stream; returns "" or why it was not sent."""
        return self._send(att.replica_id, "task", task.task_id, att.device_id, task.SerializeToString())

    def runner_replica(self) -> str | None:
        """The replica holding the runner lease (None when nobody holds it)."""
        return self._runner()

    def send_result(self, runner: str, device_id: str, result: pb.TaskResult) -> str:
        """Relay a result to the runner replica; returns "" or why it was not sent."""
        return self._send(runner, "result", result.task_id, device_id, result.SerializeToString())

    def send_offline(self, origin: str, device_id: str, task_id: str) -> None:
        self._send(origin, "offline", task_id, device_id, b"")

    def _send(self, target: str, kind: str, task_id: str, device_id: str, payload: bytes) -> str:
        if len(payload) > MAX_RELAY_BYTES:
            logger.warning("fl relay refused kind=%s bytes=%d max=%d", kind, len(payload), MAX_RELAY_BYTES)
            return "too_large_to_relay"
        row = FlRelay(target=target, kind=kind, origin=self.replica_id, task_id=task_id[:64],
                      device_id=device_id, payload=payload, created_at=utcnow())  # fmt: skip
        with Session(self._engine) as s:
            s.add(row)
            s.commit()
        self.relayed[kind] += 1
        try:
            self._bus.publish(CHANNEL, f"relay:{target}")
        except Exception:  # the target's poll picks the row up anyway
            logger.warning("fl relay wake-up not sent target=%s", target, exc_info=True)
        return ""

    # ------------------------------------------------------------------ relay in

    def start(self, sink: RelaySink) -> None:
        self._sink = sink
        self._worker.start()

    def stop(self) -> None:
        self._worker.stop()

    def _on_bus(self, payload: str) -> None:
        if payload == f"relay:{self.replica_id}":
            self._worker.wake()

    def _drain_all(self) -> None:
        while self.drain() == BATCH:
            pass

    def drain(self) -> int:
        """Take the rows addressed to this replica and hand them to the grid; returns how many."""
        with Session(self._engine) as s:
            query = (
                select(FlRelay)
                .where(col(FlRelay.target) == self.replica_id)
                .order_by(col(FlRelay.id))
                .limit(BATCH)
                .with_for_update(skip_locked=True)
            )
            rows = list(s.exec(query).all())
            if rows:
                s.execute(delete(FlRelay).where(col(FlRelay.id).in_([r.id for r in rows])))
            s.commit()
            items = [(r.kind, r.origin, r.task_id, r.device_id, bytes(r.payload)) for r in rows]
        for item in items:
            self._dispatch(*item)
        if not items:
            self._purge_stale()
        return len(items)

    def _dispatch(self, kind: str, origin: str, task_id: str, device_id: str, payload: bytes) -> None:
        sink = self._sink
        assert sink is not None, "start() first"
        try:
            if kind == "task":
                sink.deliver(device_id, pb.TrainTask.FromString(payload), origin)
            elif kind == "result":
                sink.accept_result(device_id, pb.TaskResult.FromString(payload))
            elif kind == "offline":
                sink.fail_offline(task_id)
        except Exception:
            logger.exception("fl relay row dropped kind=%s device_id=%s task_id=%s", kind, device_id, task_id)

    def _purge_stale(self) -> None:
        if time.monotonic() - self._purged_at < STALE_S / 10:
            return
        self._purged_at = time.monotonic()
        cutoff = utcnow() - timedelta(seconds=STALE_S)
        with self._engine.begin() as conn:
            conn.execute(delete(FlRelay).where(col(FlRelay.created_at) < cutoff))
