"""Adapter from the drift monitor to the telemetry outbox (store-and-forward, exactly-once).

Owns the record format on the outbox: `kind="drift"` with a serialized `edgeloop.v1.DriftEpisode`
(once when an episode opens, once when it closes) and `kind="drift_sketch"` with a
`DriftSketch` every `sketch_every` input rows or on `flush_sketch()`. Time comes from an injected
clock and the monitor id from an injected random source. Does not compute statistics.

Daemon usage::

    monitor = DriftMonitor(ReferenceProfile.from_bytes(bundle_bytes))
    reporter = DriftReporter(outbox, clock=SystemClock(), model_name="m", model_version="3")
    reporter.publish(monitor, monitor.observe(inputs, outputs))   # per captured micro-batch
    reporter.publish(monitor, monitor.observe_labels(errors))     # when late labels arrive
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Protocol

from agent.drift.codec import Origin, episode_to_proto, sketch_to_proto
from agent.drift.episodes import Episode, EpisodeState
from agent.drift.monitor import DriftMonitor

logger = logging.getLogger(__name__)


class Outbox(Protocol):
    def append(self, *, timestamp_ms: int, kind: str, metrics: dict[str, float], payload: bytes = b"") -> int:
        """Store one record durably. Raises agent.errors.StorageError when the store is unusable."""
        ...


class Clock(Protocol):
    def time_ms(self) -> int: ...


class DriftReporter:
    """Writes drift episodes and periodic sketches of one monitor into the outbox."""

    def __init__(
        self,
        outbox: Outbox,
        *,
        clock: Clock,
        model_name: str,
        model_version: str,
        sketch_every: int = 10_000,
        token: Callable[[int], str] = secrets.token_hex,
    ) -> None:
        self._outbox = outbox
        self._clock = clock
        self.origin = Origin(model_name, model_version, token(8))
        self._sketch_every = sketch_every
        self._opened_ms: dict[int, int] = {}
        self._sketch_from_ms = clock.time_ms()
        self._sketched_samples = 0

    def now_ms(self) -> int:
        """The reporter's clock (the feeder stamps rows for seasonal references with it)."""
        return self._clock.time_ms()

    def publish(self, monitor: DriftMonitor, events: list[Episode]) -> int:
        """Append one record per episode event (and a sketch when due); returns records written."""
        now = self._clock.time_ms()
        for event in events:
            opened = self._opened_ms.setdefault(event.episode_id, now)
            closed = now if event.state == EpisodeState.CLOSED else 0
            if closed:
                self._opened_ms.pop(event.episode_id, None)
            msg = episode_to_proto(
                event, origin=self.origin, samples_seen=monitor.samples, opened_ms=opened, closed_ms=closed
            )
            metrics = {"severity": event.severity, "open": float(event.state == EpisodeState.OPEN)}
            self._outbox.append(
                timestamp_ms=now, kind="drift", metrics=metrics, payload=msg.SerializeToString()
            )
            logger.info("drift episode reported id=%d state=%s", event.episode_id, event.state)
        written = len(events)
        if monitor.samples - self._sketched_samples >= self._sketch_every:
            written += self.flush_sketch(monitor)
        return written

    def flush_sketch(self, monitor: DriftMonitor) -> int:
        """Append a sketch of the rows seen since the last one; returns 1."""
        now = self._clock.time_ms()
        msg = sketch_to_proto(
            monitor, monitor.take_bins(), origin=self.origin, from_ms=self._sketch_from_ms, to_ms=now
        )
        metrics = {"samples": float(msg.samples), "bad_inputs": float(monitor.bad.total)}
        self._outbox.append(
            timestamp_ms=now, kind="drift_sketch", metrics=metrics, payload=msg.SerializeToString()
        )
        self._sketch_from_ms, self._sketched_samples = now, monitor.samples
        return 1
