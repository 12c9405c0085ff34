"""`WakeLoop`: a daemon thread that runs one step every `poll_s`, or at once when woken.

The shape every replica-aware worker here has: a bus message (or a reconnect of the bus, after
which messages may have been missed) wakes it early, the poll covers a lost wake-up, a step that
was fenced out (`LeaseLost`: another replica holds the job now) is logged as such, and any other
failure is logged with its traceback and retried at the next poll. Owns the thread only; what a
step does belongs to its caller.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from fleet_server.coordination.leases import LeaseLost

logger = logging.getLogger(__name__)


class WakeLoop:
    def __init__(self, name: str, step: Callable[[], object], *, poll_s: float) -> None:
        self.name, self._step, self.poll_s = name, step, poll_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Run the step now (safe from any thread, e.g. a bus handler)."""
        self._wake.set()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._step()
            except LeaseLost as err:
                logger.warning("%s fenced out: %s", self.name, err)
            except Exception:
                logger.exception("%s step failed; retrying in %.1fs", self.name, self.poll_s)
