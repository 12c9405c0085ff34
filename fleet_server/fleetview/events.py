"""Live fleet events for the console: one shared poller per process, fanned out to subscribers.

`EventHub` polls once a second (only while someone listens), diffs what it reads against the
previous reading (`diff`, pure) and puts Server-Sent Event frames on each subscriber's bounded
queue. A subscriber whose queue is full is dropped (its stream ends; the browser reconnects and
starts again from a fresh `fleet` event), never waited for: one slow console never holds the
poller or the other consoles. `close()` ends every stream (server shutdown).

What is compared each tick (`Snapshot`): the online set (SessionRegistry, in memory) and, in one
read transaction, every device's last_seen_at / status / desired_generation (a label change bumps
the generation; a revocation changes the status), every rollout's state and batch, every federated
run's status and highest round, and the audit head's seq. Devices whose only change is last_seen_at
are sent up to `MAX_SEEN_EVENTS` a tick (at 10,000 devices reporting every 30 s that is ~330 a second;
the table refetches its page on `fleet` anyway); online flips, label changes and revocations always.
Does not own HTTP framing of the response (routes.py) or authentication (api/deps.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select
from sqlmodel import col

from fleet_server.audit.models import AuditHead
from fleet_server.federated.models import FlRound, FlRun
from fleet_server.models import Device, as_utc
from fleet_server.rollouts.models import Rollout

logger = logging.getLogger(__name__)

MAX_SEEN_EVENTS = 200
Event = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class Snapshot:
    online: frozenset[str]
    devices: dict[str, tuple[datetime | None, str, int]]  # id -> (last_seen_at, status, generation)
    rollouts: dict[str, tuple[str, int]] = field(default_factory=dict)  # id -> (state, batch)
    runs: dict[str, tuple[str, int]] = field(default_factory=dict)  # id -> (status, round)
    audit_head: int = 0

    def fleet(self) -> dict[str, int]:
        online = sum(1 for d in self.devices if d in self.online)
        return {"total": len(self.devices), "online": online, "offline": len(self.devices) - online}


def _device_event(snap: Snapshot, device_id: str) -> Event:
    last_seen = as_utc(snap.devices[device_id][0])
    return "device", {
        "id": device_id,
        "online": device_id in snap.online,
        "last_seen_at": last_seen.isoformat() if last_seen is not None else None,
    }


def diff(old: Snapshot | None, new: Snapshot) -> list[Event]:
    """The events that turn `old` into `new` (None: a first reading, which yields only `fleet`)."""
    if old is None:
        return [("fleet", new.fleet())]
    events: list[Event] = []
    if new.fleet() != old.fleet():
        events.append(("fleet", new.fleet()))
    seen_only: list[str] = []
    for device_id, (seen, status, generation) in new.devices.items():
        before = old.devices.get(device_id)
        flipped = (device_id in new.online) != (device_id in old.online)
        if before is None or flipped or before[1:] != (status, generation):
            events.append(_device_event(new, device_id))
        elif before[0] != seen:
            seen_only.append(device_id)
    events += [_device_event(new, d) for d in seen_only[:MAX_SEEN_EVENTS]]
    for rid, (state, batch) in new.rollouts.items():
        if old.rollouts.get(rid) != (state, batch):
            events.append(("rollout", {"id": rid, "state": state, "batch": batch}))
    for run_id, (status, rnd) in new.runs.items():
        if old.runs.get(run_id) != (status, rnd):
            events.append(("run", {"id": run_id, "state": status, "round": rnd}))
    if new.audit_head != old.audit_head:
        events.append(("audit", {"head_seq": new.audit_head}))
    return events


def frame(event: Event) -> str:
    name, data = event
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def read_state(engine: Engine) -> Callable[[frozenset[str]], Snapshot]:
    """The database half of a Snapshot: four statements in one read transaction."""

    def read(online: frozenset[str]) -> Snapshot:
        last_round = (
            select(col(FlRound.run_id), func.max(col(FlRound.server_round)).label("r"))
            .group_by(col(FlRound.run_id))
            .subquery()
        )
        with engine.connect() as conn:
            devices = conn.execute(
                select(
                    col(Device.id),
                    col(Device.last_seen_at),
                    col(Device.status),
                    col(Device.desired_generation),
                )
            ).all()
            rollouts = conn.execute(select(col(Rollout.id), col(Rollout.state), col(Rollout.batch))).all()
            runs = conn.execute(
                select(col(FlRun.id), col(FlRun.status), func.coalesce(last_round.c.r, 0)).outerjoin(
                    last_round, last_round.c.run_id == col(FlRun.id)
                )
            ).all()
            head = conn.execute(select(func.max(col(AuditHead.seq)))).scalar()
        return Snapshot(
            online=online,
            devices={r[0]: (r[1], r[2], int(r[3])) for r in devices},
            rollouts={r[0]: (r[1], int(r[2])) for r in rollouts},
            runs={r[0]: (r[1], int(r[2])) for r in runs},
            audit_head=int(head or 0),
        )

    return read


class HubClosedError(Exception):
    """The server is shutting down: no new subscriptions."""


class Subscription:
    def __init__(self, maxsize: int) -> None:
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize)
        self.dropped = False

    def end(self) -> None:
        """Wake the reader with the end marker (discarding what it had not read)."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)


@dataclass
class HubStats:
    subscribers: int = 0
    ticks: int = 0
    poll_errors: int = 0
    dropped_subscribers: int = 0


class EventHub:
    """Shared poller + subscriber fan-out. Lives on the serving loop (`app.state.fleet_events`)."""

    def __init__(
        self,
        *,
        read: Callable[[frozenset[str]], Snapshot],
        online: Callable[[], set[str]],
        interval_s: float = 1.0,
        ping_s: float = 15.0,
        queue_max: int = 256,
    ) -> None:
        self._read, self._online = read, online
        self.interval_s, self.ping_s, self._queue_max = interval_s, ping_s, queue_max
        self._subs: set[Subscription] = set()
        self._last: Snapshot | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.stats = HubStats()

    def subscribe(self) -> Subscription:
        """Raises: HubClosedError once `close()` ran."""
        if self._closed:
            raise HubClosedError("the server is shutting down")
        if self._task is None or self._task.done():
            self._last = None  # a restarted poller starts from a fresh reading (its first `fleet`)
            self._task = asyncio.create_task(self._run(), name="fleetview-events")
        sub = Subscription(self._queue_max)
        if self._last is not None:
            sub.queue.put_nowait(frame(("fleet", self._last.fleet())))
        self._subs.add(sub)
        self.stats.subscribers = len(self._subs)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)
        self.stats.subscribers = len(self._subs)

    async def stream(self, sub: Subscription) -> AsyncIterator[str]:
        """SSE text for one subscriber: its events, `: ping` when idle for ping_s, until it ends."""
        try:
            yield "retry: 2000\n\n"
            while True:
                try:
                    item = await asyncio.wait_for(sub.queue.get(), timeout=self.ping_s)
                except TimeoutError:
                    yield ": ping\n\n"
                    continue
                if item is None:
                    return
                yield item
        finally:
            self.unsubscribe(sub)

    async def close(self) -> None:
        """End every stream and stop the poller (idempotent)."""
        self._closed = True
        for sub in list(self._subs):
            sub.end()
        self._subs.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def publish(self, events: list[Event]) -> None:
        frames = [frame(e) for e in events]
        for sub in list(self._subs):
            try:
                for text in frames:
                    sub.queue.put_nowait(text)
            except asyncio.QueueFull:
                self._drop(sub)

    def _drop(self, sub: Subscription) -> None:
        sub.dropped = True
        self.unsubscribe(sub)
        self.stats.dropped_subscribers += 1
        logger.warning("fleet events: slow subscriber dropped queue_max=%d", self._queue_max)
        sub.end()

    async def _run(self) -> None:
        while self._subs and not self._closed:
            try:
                snap = await asyncio.to_thread(self._read, frozenset(self._online()))
            except Exception as err:  # the database may be down: keep the streams, try next tick
                self.stats.poll_errors += 1
                logger.warning("fleet events: poll failed: %s", type(err).__name__)
            else:
                self.stats.ticks += 1
                events, self._last = diff(self._last, snap), snap
                if events:
                    self.publish(events)
            await asyncio.sleep(self.interval_s)
