"""The replica bus: small notifications fanned out to every replica (PostgreSQL LISTEN/NOTIFY).

`publish(channel, payload)` reaches every subscriber of `channel` on every replica, the
publishing one included (a publisher must not also deliver locally). Delivery is at most once and
only while connected: after the listening connection drops, `on_reconnect` handlers run so
subscribers resync from the database, which stays the source of truth. Payloads are UTF-8 text of
at most `MAX_PAYLOAD_BYTES` (PostgreSQL's limit is 8000 bytes); larger ones raise
`PayloadTooLarge` rather than being chunked — send an id and let the receiver read the rows.

- `PgBus`: its own psycopg (v3) autocommit connection LISTENs on a daemon thread, reconnecting
  with backoff; `publish` runs `pg_notify` on the engine's pool (delivered when that commits).
- `LocalBus`: the same semantics in one process (SQLite, a single replica, tests).

Does not decide what is sent (the desired-state, kick and federated modules do).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Protocol

import psycopg
from sqlalchemy import Connection, Engine, text

from fleet_server.errors import InvalidRequestError

logger = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES = 7900
Handler = Callable[[str], None]


class PayloadTooLarge(InvalidRequestError):
    """A bus payload over `MAX_PAYLOAD_BYTES`: publish an id and let receivers read the rows."""


class Bus(Protocol):
    def publish(self, channel: str, payload: str) -> None:
        """Send `payload` to every subscriber of `channel` on every replica; any thread.

        Raises:
            PayloadTooLarge: the UTF-8 payload is over MAX_PAYLOAD_BYTES.
            sqlalchemy.exc.SQLAlchemyError: (PgBus) the database refused the notify.
        """
        ...

    def subscribe(self, channel: str, handler: Handler) -> None:
        """Call `handler(payload)` on the bus thread for each message published after this returns.

        Best before start(); allowed after (PgBus returns once the channel is listened to).
        """
        ...

    def on_reconnect(self, handler: Callable[[], None]) -> None:
        """Call `handler()` after a reconnect: messages may have been missed, resync."""
        ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


def check_payload(channel: str, payload: str) -> None:
    if not channel.isidentifier() or channel.lower() != channel:
        raise InvalidRequestError(f"bus channel {channel!r} must be a lower-case identifier")
    size = len(payload.encode())
    if size > MAX_PAYLOAD_BYTES:
        raise PayloadTooLarge(f"bus payload on {channel!r} is {size} bytes, over {MAX_PAYLOAD_BYTES}")


class _Handlers:
    """Subscriptions and reconnect handlers, each call shielded so one bad handler cannot kill the bus."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_channel: dict[str, list[Handler]] = defaultdict(list)
        self._reconnect: list[Callable[[], None]] = []

    def add(self, channel: str, handler: Handler) -> bool:
        """Register; True when `channel` is new."""
        with self._lock:
            new = channel not in self._by_channel
            self._by_channel[channel].append(handler)
            return new

    def add_reconnect(self, handler: Callable[[], None]) -> None:
        with self._lock:
            self._reconnect.append(handler)

    def channels(self) -> list[str]:
        with self._lock:
            return list(self._by_channel)

    def deliver(self, channel: str, payload: str) -> None:
        with self._lock:
            handlers = list(self._by_channel.get(channel, ()))
        for handler in handlers:
            try:
                handler(payload)
            except Exception:
                logger.exception("bus handler failed channel=%s", channel)

    def resync(self) -> None:
        with self._lock:
            handlers = list(self._reconnect)
        for handler in handlers:
            try:
                handler()
            except Exception:
                logger.exception("bus reconnect handler failed")


class LocalBus:
    """In-process bus: publish enqueues; a daemon thread runs the handlers."""

    def __init__(self) -> None:
        self._handlers = _Handlers()
        self._queue: queue.SimpleQueue[tuple[str, str] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def publish(self, channel: str, payload: str) -> None:
        check_payload(channel, payload)
        self._queue.put((channel, payload))

    def subscribe(self, channel: str, handler: Handler) -> None:
        check_payload(channel, "")
        self._handlers.add(channel, handler)

    def on_reconnect(self, handler: Callable[[], None]) -> None:
        self._handlers.add_reconnect(handler)  # an in-process bus never disconnects

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bus-local", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            self._handlers.deliver(*item)

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=5)
            self._thread = None


class PgBus:
    """LISTEN/NOTIFY on PostgreSQL: one listening connection per replica, reconnected with backoff."""

    def __init__(
        self,
        engine: Engine,
        *,
        conninfo: str | None = None,
        poll_s: float = 0.25,
        max_backoff_s: float = 5.0,
    ) -> None:
        self._engine = engine
        self._conninfo = conninfo or libpq_url(engine)
        self._poll_s = poll_s
        self._max_backoff_s = max_backoff_s
        self._handlers = _Handlers()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._pending: queue.SimpleQueue[tuple[str, threading.Event]] = queue.SimpleQueue()
        self._subscribe_timeout_s = 5.0
        self.connected = threading.Event()
        self.reconnects = 0

    def publish(self, channel: str, payload: str) -> None:
        check_payload(channel, payload)
        with self._engine.begin() as conn:
            conn.execute(
                text("SELECT pg_notify(:channel, :payload)"), {"channel": channel, "payload": payload}
            )

    def subscribe(self, channel: str, handler: Handler) -> None:
        """Register `handler`. After start(), returns once the channel is listened to (or after
        `subscribe_timeout_s` if the bus is disconnected: the next connect listens to it)."""
        check_payload(channel, "")
        if not self._handlers.add(channel, handler) or self._thread is None:
            return
        done = threading.Event()
        self._pending.put((channel, done))
        if not done.wait(self._subscribe_timeout_s):
            logger.warning("bus subscribe to %s not confirmed (disconnected?)", channel)

    def on_reconnect(self, handler: Callable[[], None]) -> None:
        self._handlers.add_reconnect(handler)

    def start(self) -> None:
        """Connect and LISTEN (a failure here is retried on the thread), then dispatch on the thread."""
        self._thread = threading.Thread(target=self._run, name="bus-pg", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._poll_s + 5)
            self._thread = None

    def backend_pid(self) -> int | None:
        """The listening connection's server pid (tests terminate it to prove the reconnect)."""
        conn = self._conn
        return conn.info.backend_pid if conn is not None and not conn.closed else None

    def _run(self) -> None:
        backoff, first = 0.1, True
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5) as conn:
                    self._listen(conn)
                    backoff = 0.1
                    if not first:
                        self.reconnects += 1
                        logger.info("bus reconnected channels=%d", len(self._handlers.channels()))
                        self._handlers.resync()
                    first = False
                    self._dispatch(conn)
            except psycopg.Error as err:
                self.connected.clear()
                self._conn = None
                first = False  # whatever was sent while we were away is lost: resync on the next connect
                logger.warning("bus connection lost, retrying in %.1fs: %s", backoff, err)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self._max_backoff_s)
        self.connected.clear()

    def _listen(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        for channel in self._handlers.channels():
            conn.execute(f'LISTEN "{channel}"')  # channel names are checked identifiers
        self._conn = conn
        self.connected.set()
        self._listen_pending(conn)

    def _listen_pending(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        """Subscriptions made after start(), on this thread (the connection is not shared)."""
        while True:
            try:
                channel, done = self._pending.get_nowait()
            except queue.Empty:
                return
            conn.execute(f'LISTEN "{channel}"')  # LISTEN twice is a no-op (a reconnect may have)
            done.set()

    def _dispatch(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        while not self._stop.is_set():
            self._listen_pending(conn)
            for note in conn.notifies(timeout=self._poll_s):
                self._handlers.deliver(note.channel, note.payload)
                if self._stop.is_set():
                    break
            if conn.closed or conn.broken:
                raise psycopg.OperationalError("bus listening connection closed")


def notify_in(conn: Connection, channel: str, payload: str) -> None:
    """PostgreSQL: NOTIFY inside the caller's transaction, delivered only if and when it commits
    (a desired-state change and its notification are atomic). Does nothing on other databases:
    there, call `bus.publish` after the commit.

    Raises:
        PayloadTooLarge: the UTF-8 payload is over MAX_PAYLOAD_BYTES.
    """
    check_payload(channel, payload)
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_notify(:channel, :payload)"), {"channel": channel, "payload": payload})


def libpq_url(engine: Engine) -> str:
    """The engine's PostgreSQL URL in libpq form (no SQLAlchemy driver suffix), password included."""
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


def build_bus(engine: Engine) -> Bus:
    """PgBus on PostgreSQL, LocalBus otherwise (SQLite is one process by construction)."""
    if engine.dialect.name == "postgresql":
        return PgBus(engine)
    return LocalBus()
