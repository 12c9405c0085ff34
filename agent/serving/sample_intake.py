"""The agent's side of the side channel of in-process apps: captured predictions and metric windows.

Owns `SampleIntake`: a non-blocking Unix datagram socket read from the event loop (`add_reader`).
Each datagram is decoded by its kind (`agent.serving.rawframe`):
  * a sample (`unpack_sample`) is offered to the service's `SampleCapture` ring under its own
    rate limit, exactly like a prediction the agent served itself, so the drift monitor and the
    OTA shadow run see the apps' live inputs (dropped when capture is off);
  * a live model metrics window (`unpack_metrics`) is merged into the service's `ModelMetrics`
    for the same model (name, version, sha256), so the windows the daemon reports, and the
    rollout gates judge, count the apps' predictions, errors, confidence and latency too. Only a
    model the agent serves or served recently (the last `_RECENT` it was seen serving, looked at
    every `_NOTE_S`) is accepted: a window for another one is counted and dropped.
Malformed, oversize or unknown frames are counted and dropped with a log line (rate-limited),
never raised. Does not rate-limit senders (each app's `SampleSender` and `MetricsFlusher` do) or
keep anything besides the capture ring and the metrics windows.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from agent.errors import ConfigError, InvalidInputError
from agent.inference.capture import SampleCapture
from agent.inference.handle import ModelMeta
from agent.inference.model_metrics import ModelId, ModelMetrics
from agent.serving.rawframe import HEADER, METRICS, SAMPLE, unpack_metrics, unpack_sample

logger = logging.getLogger(__name__)

_MAX_DATAGRAM = 256 * 1024
_PER_WAKEUP = 64
_RECENT = 4  # models the agent served lately whose app windows are still accepted (a swap, a rollback)
_NOTE_S = 0.25  # how often the serving model is looked at
_LOG_EVERY_S = 10.0  # at most one warning per reason this often


class SampleIntake:
    """Receives app samples on `path` into `capture`, and app metric windows into `metrics`."""

    def __init__(
        self,
        capture: SampleCapture | None,
        path: Path,
        *,
        metrics: ModelMetrics | None = None,
        serving: Callable[[], ModelMeta | None] = lambda: None,
    ) -> None:
        self._capture = capture
        self._metrics = metrics
        self._serving = serving
        self._path = path
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._note_timer: asyncio.TimerHandle | None = None
        self._recent: deque[ModelId] = deque(maxlen=_RECENT)
        self._logged: dict[str, float] = {}
        self.received = 0  # samples offered to the capture ring
        self.rejected = 0  # malformed samples, and datagrams of no known kind
        self.windows_merged = 0  # metric windows added to `metrics`
        self.windows_rejected = 0  # malformed or oversize metric windows
        self.windows_unknown = 0  # metric windows of a model the agent does not serve

    def start(self) -> None:
        """Bind the socket and start reading on the running loop.

        Raises:
            ConfigError: the socket cannot be bound.
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._path.unlink(missing_ok=True)
            sock.bind(str(self._path))
        except OSError as err:
            sock.close()
            raise ConfigError(f"cannot bind the sample socket {self._path}: {err}") from err
        sock.setblocking(False)
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._drain)
        self._note()

    def stop(self) -> None:
        if self._note_timer is not None:
            self._note_timer.cancel()
            self._note_timer = None
        if self._sock is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None
        self._path.unlink(missing_ok=True)

    def _note(self) -> None:
        """Every `_NOTE_S`: remember the serving model (its windows are accepted after a switch)."""
        self._note_now()
        if self._loop is not None and self._sock is not None:
            self._note_timer = self._loop.call_later(_NOTE_S, self._note)

    def _drain(self) -> None:
        assert self._sock is not None
        for _ in range(_PER_WAKEUP):
            try:
                frame = self._sock.recv(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            kind = frame[4] if len(frame) >= HEADER.size else -1
            if kind == METRICS:
                self._merge(frame)
            elif kind == SAMPLE:
                self._sample(frame)
            else:
                self.rejected += 1
                self._complain("frame", "app datagram of no known kind (%d bytes) dropped", len(frame))

    def _sample(self, frame: bytes) -> None:
        try:
            model, inputs, outputs = unpack_sample(frame)
        except InvalidInputError as err:
            self.rejected += 1
            self._complain("sample", "malformed app sample dropped: %s", err)
            return
        if self._capture is not None:
            self.received += 1
            self._capture.offer(model, inputs, outputs)

    def _merge(self, frame: bytes) -> None:
        if self._metrics is None:
            return
        try:
            model, counts = unpack_metrics(frame)
            if model not in self._recent:
                self._note_now()
            if model not in self._recent:
                self.windows_unknown += 1
                self._complain(
                    "unknown",
                    "app metrics window for a model the agent does not serve dropped model=%s@%s sha256=%s",
                    model.name[:64],
                    model.version[:64],
                    model.sha256[:12],
                )
                return
            merged = self._metrics.merge(model, counts)
        except (InvalidInputError, ValueError) as err:
            self.windows_rejected += 1
            self._complain("metrics", "malformed app metrics window dropped: %s", err)
            return
        if merged:
            self.windows_merged += 1
        else:  # counted in the metrics' dropped_models
            self._complain("full", "app metrics window dropped: too many models in this window")

    def _note_now(self) -> None:
        meta = self._serving()
        if meta is not None:
            model = ModelId(meta.name, meta.version, meta.sha256)
            if model not in self._recent:
                self._recent.append(model)

    def _complain(self, reason: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._logged.get(reason, float("-inf")) >= _LOG_EVERY_S:
            self._logged[reason] = now
            logger.warning(message, *args)
        else:
            logger.debug(message, *args)
