"""Desired-state changes and kicks fanned out to the other replicas over the bus (bus.py).

A device's Sync stream lives on one replica; a label change, a rollout step or a revocation may
happen on any. `desired_changed(device_id)` queues the id; a daemon thread publishes the queued
ids every `linger_s` (50 ms) on `edgeloop_desired`, many ids per notification, chunked under the
bus payload limit, each message naming the origin replica. `kick` publishes at once on
`edgeloop_kick` (revocations are rare and urgent). Receivers ignore their own messages (the bus
delivers to the publisher too) and hand the ids to `attach`'s callbacks, which push to or close
the sessions held locally. After the bus reconnects (notifications may have been missed) the
`resync` callback runs: the receiver pushes current desired state to all its local sessions.

Payloads are JSON: `{"o": origin, "ids": [...]}` and `{"o": origin, "id": ..., "code": ...,
"detail": ...}`. Delivery is at most once; the database stays the source of truth.

Does not decide who is connected where (presence.py) nor push anything itself (the registry does).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from fleet_server.coordination.bus import MAX_PAYLOAD_BYTES, Bus

logger = logging.getLogger(__name__)

DESIRED_CHANNEL = "edgeloop_desired"
KICK_CHANNEL = "edgeloop_kick"
MAX_DETAIL = 300
RETRY_S = 1.0


@dataclass
class FanoutStats:
    published: int = 0  # notifications sent (desired + kick)
    ids_published: int = 0
    received: int = 0  # notifications from other replicas
    publish_errors: int = 0
    resyncs: int = 0


class BusFanout:
    """Coalesced cross-replica desired-state notifications and kicks (thread-safe)."""

    def __init__(
        self,
        bus: Bus,
        origin: str,
        *,
        linger_s: float = 0.05,
        max_payload: int = MAX_PAYLOAD_BYTES,
    ) -> None:
        self._bus = bus
        self.origin = origin
        self._linger_s = linger_s
        self._max_payload = max_payload
        self._pending: dict[str, None] = {}  # insertion-ordered set
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stats = FanoutStats()

    # ------------------------------------------------------------ receiving

    def attach(
        self,
        *,
        desired: Callable[[list[str]], None],
        kick: Callable[[str, str, str], None],
        resync: Callable[[], None],
    ) -> None:
        """Subscribe the receiver's callbacks (they run on the bus thread). Call before bus.start()."""

        def on_desired(payload: str) -> None:
            msg = self._decode(payload)
            if msg is not None and isinstance(ids := msg.get("ids"), list):
                self.stats.received += 1
                desired([str(i) for i in ids])

        def on_kick(payload: str) -> None:
            msg = self._decode(payload)
            if msg is not None and isinstance(device_id := msg.get("id"), str):
                self.stats.received += 1
                kick(device_id, str(msg.get("code", "PERMISSION_DENIED")), str(msg.get("detail", "")))

        def on_reconnect() -> None:
            self.stats.resyncs += 1
            resync()

        self._bus.subscribe(DESIRED_CHANNEL, on_desired)
        self._bus.subscribe(KICK_CHANNEL, on_kick)
        self._bus.on_reconnect(on_reconnect)

    def _decode(self, payload: str) -> dict[str, object] | None:
        """The message, or None when it is ours or not ours to read."""
        try:
            msg = json.loads(payload)
        except ValueError:
            logger.warning("fanout: undecodable bus payload (%d bytes) ignored", len(payload))
            return None
        if not isinstance(msg, dict) or msg.get("o") == self.origin:
            return None
        return msg

    # ------------------------------------------------------------ sending (any thread)

    def desired_changed(self, device_id: str) -> None:
        with self._lock:
            self._pending[device_id] = None
        self._wake.set()

    def kick(self, device_id: str, code: str, detail: str) -> None:
        payload = json.dumps({"o": self.origin, "id": device_id, "code": code, "detail": detail[:MAX_DETAIL]})
        try:
            self._bus.publish(KICK_CHANNEL, payload)
            self.stats.published += 1
        except Exception:
            self.stats.publish_errors += 1
            logger.exception("fanout: kick not published device_id=%s", device_id)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fanout", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.flush()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            if self._stop.wait(self._linger_s):  # let a burst of changes gather
                return
            self._wake.clear()
            if not self.flush():
                self._stop.wait(RETRY_S)
                self._wake.set()

    def flush(self) -> bool:
        """Publish what is queued; False (ids queued again) when the bus refused."""
        with self._lock:
            ids, self._pending = list(self._pending), {}
        for sent, chunk in enumerate(self.chunks(ids)):
            try:
                self._bus.publish(DESIRED_CHANNEL, json.dumps({"o": self.origin, "ids": chunk}))
            except Exception as err:
                self.stats.publish_errors += 1
                logger.warning("fanout: desired ids not published (retrying): %s", err)
                unsent = [i for c in list(self.chunks(ids))[sent:] for i in c]
                with self._lock:
                    self._pending = dict.fromkeys(unsent) | self._pending
                return False
            self.stats.published += 1
            self.stats.ids_published += len(chunk)
        return True

    def chunks(self, ids: list[str]) -> Iterator[list[str]]:
        """`ids` split so that each message's JSON stays within the payload limit."""
        base = len(json.dumps({"o": self.origin, "ids": []}).encode())
        chunk: list[str] = []
        size = base
        for device_id in ids:
            cost = len(json.dumps(device_id).encode()) + 2  # ", " separator
            if chunk and size + cost > self._max_payload:
                yield chunk
                chunk, size = [], base
            chunk.append(device_id)
            size += cost
        if chunk:
            yield chunk
