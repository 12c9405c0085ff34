"""The app's live model metrics: counted in the app's process, handed to the agent every second.

Owns `MetricsFlusher`: the app's own `ModelMetrics` (the agent's bounded, thread-safe window
accumulator, counts only) fed by `LocalModel` on every call, and a daemon thread that every
`interval_s` (and once more at `close`) closes the window and sends each model's counts as one
`METRICS` datagram (`agent.serving.rawframe`) with a non-blocking `sendto` to the agent's sample
socket. The agent adds them to its own window of the same model (`agent.serving.sample_intake`),
so the metrics it reports, and the rollout gates that judge them, see the app's predictions,
errors, confidence and latency. A full socket buffer or an agent that is down loses that window:
a counted drop (`dropped`), never a wait for the app. Does not retry or keep windows it could not
send.

The hot path stays cheap: a call with a small first output (at most `_DEFER_VALUES` values, e.g. a
classifier's logits) only queues a copy of it with its latency; the queue (at most `_PENDING`
calls) is added to the window in one numpy pass (`ModelMetrics.observe_many`) when it is full or
at the next flush, by whichever thread gets there. Larger outputs are observed at once.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import deque
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from agent.errors import InvalidInputError
from agent.inference.handle import ModelMeta
from agent.inference.model_metrics import ModelMetrics
from agent.serving.rawframe import pack_metrics

logger = logging.getLogger(__name__)

_DEFER_VALUES = 1024  # first outputs up to this many values are queued, larger ones observed at once
_PENDING = 256  # queued calls before they are added to the window


class MetricsFlusher:
    """`metrics` (feed it) plus the thread that ships its windows; counters for `LocalModel.stats()`."""

    def __init__(self, path: Path, *, interval_s: float = 1.0) -> None:
        self.metrics = ModelMetrics()
        self._pending: deque[tuple[ModelMeta, np.ndarray, float]] = deque()
        self._path = str(path)
        self._interval = interval_s
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._lock = threading.Lock()  # one flush at a time (the thread, or `close`)
        self._stop = threading.Event()
        self.sent = 0  # windows the agent's socket accepted
        self.dropped = 0  # windows lost: agent down or busy, or unencodable
        self._thread = threading.Thread(target=self._run, name="edgeloop-metrics-flusher", daemon=True)
        self._thread.start()

    def observe(self, meta: ModelMeta, outputs: Mapping[str, np.ndarray], latency_s: float) -> None:
        """One successful call (`ModelMetrics.observe`, deferred for a small output)."""
        first = next(iter(outputs.values()), None)
        if first is None or first.size > _DEFER_VALUES:
            self.metrics.observe(meta, outputs, latency_s)
            return
        pending = self._pending
        pending.append((meta, first.copy(), latency_s))  # a copy: the app may change its answer
        if len(pending) >= _PENDING:
            self._drain()

    def _drain(self) -> None:
        """Add the queued calls to the window, one `observe_many` per run of the same model."""
        pending = self._pending
        batch: list[tuple[ModelMeta, np.ndarray, float]] = []
        for _ in range(len(pending)):
            try:
                batch.append(pending.popleft())  # thread-safe: a concurrent drain takes the others
            except IndexError:
                break
        start = 0
        for end in range(1, len(batch) + 1):
            if end == len(batch) or batch[end][0] is not batch[start][0]:
                run = batch[start:end]
                self.metrics.observe_many(run[0][0], [a for _, a, _ in run], [t for _, _, t in run])
                start = end

    def flush(self) -> int:
        """Close the window now and send it; returns how many model windows were sent."""
        with self._lock:
            if self._sock.fileno() < 0:
                return 0
            self._drain()
            sent = 0
            for model, counts in self.metrics.rotate_counts():
                try:
                    self._sock.sendto(pack_metrics(model, counts), self._path)
                except (OSError, InvalidInputError) as err:  # BlockingIOError, ENOENT, ECONNREFUSED
                    self.dropped += 1
                    logger.debug("metrics window dropped model=%s@%s: %s", model.name, model.version, err)
                    continue
                sent += 1
            self.sent += sent
            return sent

    def close(self) -> None:
        """Stop the thread, send the last window, close the socket."""
        self._stop.set()
        self._thread.join(5)
        self.flush()
        with self._lock:
            self._sock.close()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.flush()
            except Exception:  # the flusher must outlive anything a window throws at it
                logger.exception("metrics flush failed; the window is lost")
