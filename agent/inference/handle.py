"""Reference-counted model handles and the RCU-style holder that makes hot swaps lossless.

Owns `ModelHandle` (a loaded runtime + what it is, with a lease count) and `ModelHolder` (the one
"current" pointer). A request leases the current handle; `swap()` publishes a new handle atomically
and retires the old one, which is closed only when its last lease ends. So requests in flight finish
on the old model, new requests go to the new one, and none fails because of the swap.
Does not load artifacts, touch slots or know about gRPC.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from agent.errors import NoModelError
from agent.inference.runtime import InferenceRuntime

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelMeta:
    """What a loaded model is: identity, origin slot and artifact."""

    name: str
    version: str
    slot: str
    artifact: Path
    sha256: str = ""

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}"


class ModelHandle:
    """A runtime plus a lease counter; closed once retired and no longer leased."""

    def __init__(self, runtime: InferenceRuntime, meta: ModelMeta) -> None:
        self.runtime = runtime
        self.meta = meta
        self._leases = 0
        self._retired = False
        self._closed = False
        self._lock = threading.Lock()
        self.cost_per_sample_s = float("inf")  # moving average; unknown until measured

    def record_cost(self, seconds: float, samples: int) -> None:
        """Fold one measured backend call into `cost_per_sample_s` (EWMA; races only blur it)."""
        per_sample = seconds / max(1, samples)
        previous = self.cost_per_sample_s
        self.cost_per_sample_s = per_sample if previous == float("inf") else 0.9 * previous + 0.1 * per_sample

    @property
    def closed(self) -> bool:
        return self._closed

    def _acquire(self) -> None:
        with self._lock:
            self._leases += 1

    def _release(self) -> None:
        with self._lock:
            self._leases -= 1
            close = self._retired and self._leases == 0
        if close:
            self._close()

    def retire(self) -> None:
        """No new leases will be handed out; close when the last one ends."""
        with self._lock:
            self._retired = True
            close = self._leases == 0
        if close:
            self._close()

    def _close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.runtime.close()
        logger.info("closed model model=%s slot=%s", self.meta.key, self.meta.slot)


class ModelHolder:
    """The current model pointer; lease/swap are safe from any thread."""

    def __init__(self) -> None:
        self._current: ModelHandle | None = None
        self._lock = threading.Lock()

    @property
    def current(self) -> ModelHandle | None:
        return self._current

    @contextmanager
    def lease(self) -> Iterator[ModelHandle]:
        """Pin the current handle for the duration of one request.

        Raises:
            NoModelError: nothing is loaded.
        """
        with self._lock:
            handle = self._current
            if handle is None:
                raise NoModelError("no model is loaded")
            handle._acquire()
        try:
            yield handle
        finally:
            handle._release()

    def swap(self, new: ModelHandle, *, expected: ModelHandle | None = None) -> bool:
        """Publish `new`; retire the old handle. With `expected`, swap only if it is still current.

        Returns:
            Whether the swap happened (False: `expected` was no longer current; `new` is retired).
        """
        with self._lock:
            swapped = expected is None or self._current is expected
            old = self._current if swapped else new
            if swapped:
                self._current = new
        if old is not None:
            old.retire()
        if swapped:
            logger.info("swapped model to=%s slot=%s", new.meta.key, new.meta.slot)
        return swapped

    def clear(self) -> None:
        """Retire the current handle and hold nothing (shutdown)."""
        with self._lock:
            old, self._current = self._current, None
        if old is not None:
            old.retire()
