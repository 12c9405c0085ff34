"""The app's side of the sample side channel: rate-limited, lossy, never waits on the agent.

Owns `SampleSender`: a token bucket (the agent's `capture_per_second`, small bursts) decides which
predictions are offered; an admitted one is encoded as one datagram (`agent.serving.rawframe`) and
sent with a non-blocking `sendto` on an unconnected Unix datagram socket to the agent's sample
socket. A full socket buffer, an agent that is down or a sample larger than a datagram is a counted
drop, never a wait or an error for the app. The agent tees what it receives into its capture ring,
which feeds the drift monitor and the OTA shadow run (`agent.serving.sample_intake`).
Does not batch, retry or persist samples.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from agent.errors import InvalidInputError
from agent.serving.rawframe import pack_sample

logger = logging.getLogger(__name__)

MAX_DATAGRAM = 200 * 1024  # below Linux's default Unix datagram limit (net.core.wmem_default)


class SampleSender:
    """Token bucket + non-blocking datagrams; thread-safe; counters for `LocalModel.stats()`."""

    def __init__(
        self,
        path: Path,
        *,
        per_second: float,
        burst: int = 4,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = str(path)
        self._rate = per_second
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._last = clock()
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self.sent = 0
        self.dropped = 0

    def offer(self, model: str, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> bool:
        """Send this prediction if the rate allows and the agent has room; returns whether it went."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
            self._last = now
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
        try:
            frame = pack_sample(model, inputs, outputs)
        except InvalidInputError:
            self.dropped += 1
            return False
        if len(frame) > MAX_DATAGRAM:
            self.dropped += 1
            return False
        try:
            self._sock.sendto(frame, self._path)
        except OSError as err:  # BlockingIOError (agent busy), ENOENT/ECONNREFUSED (agent down)
            self.dropped += 1
            logger.debug("sample dropped: %s", err)
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        self._sock.close()
