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
"""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path

from agent.errors import InvalidInputError
from agent.inference.model_metrics import ModelMetrics
from agent.serving.rawframe import pack_metrics

logger = logging.getLogger(__name__)


class MetricsFlusher:
    """`metrics` (feed it) plus the thread that ships its windows; counters for `LocalModel.stats()`."""

    def __init__(self, path: Path, *, interval_s: float = 1.0) -> None:
        self.metrics = ModelMetrics()
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

    def flush(self) -> int:
        """Close the window now and send it; returns how many model windows were sent."""
        with self._lock:
            if self._sock.fileno() < 0:
                return 0
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
