"""The agent's side of the sample side channel: captured predictions sent by in-process apps.

Owns `SampleIntake`: a non-blocking Unix datagram socket read from the event loop (`add_reader`),
each datagram decoded (`agent.serving.rawframe.unpack_sample`) and offered to the service's
`SampleCapture` ring under its own rate limit, exactly like a prediction the agent served itself.
So the drift monitor and the OTA shadow run see the apps' live inputs. Malformed datagrams are
counted and dropped. Does not rate-limit senders (each app's `SampleSender` does) or keep
anything besides the capture ring.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

from agent.errors import ConfigError, InvalidInputError
from agent.inference.capture import SampleCapture
from agent.serving.rawframe import unpack_sample

logger = logging.getLogger(__name__)

_MAX_DATAGRAM = 256 * 1024
_PER_WAKEUP = 64


class SampleIntake:
    """Receives app samples on `path` into `capture` while started."""

    def __init__(self, capture: SampleCapture, path: Path) -> None:
        self._capture = capture
        self._path = path
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.received = 0
        self.rejected = 0

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

    def stop(self) -> None:
        if self._sock is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None
        self._path.unlink(missing_ok=True)

    def _drain(self) -> None:
        assert self._sock is not None
        for _ in range(_PER_WAKEUP):
            try:
                frame = self._sock.recv(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            try:
                model, inputs, outputs = unpack_sample(frame)
            except InvalidInputError as err:
                self.rejected += 1
                logger.debug("malformed app sample dropped: %s", err)
                continue
            self.received += 1
            self._capture.offer(model, inputs, outputs)
