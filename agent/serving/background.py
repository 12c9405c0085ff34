"""Run an `InferenceService` on its own event-loop thread, driven from synchronous code.

Owns a daemon thread with an asyncio loop and blocking wrappers (`call`) around the service's
coroutines. Used by tests, the benchmark and any synchronous host process; the agent daemon itself
awaits `InferenceService` directly on its own loop. Does not add behaviour to the service.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TypeVar

from agent.serving.server import InferenceService

_T = TypeVar("_T")


class BackgroundService:
    """``with BackgroundService(service) as bg: bg.call(service.promote)``."""

    def __init__(self, service: InferenceService, *, timeout_s: float = 60.0) -> None:
        self.service = service
        self._timeout = timeout_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="inference-loop", daemon=True)

    def call(self, fn: Callable[[], Awaitable[_T]]) -> _T:
        """Run ``fn()`` (a coroutine factory) on the service loop and wait for its result."""

        async def _run() -> _T:
            return await fn()

        return asyncio.run_coroutine_threadsafe(_run(), self._loop).result(self._timeout)

    def start(self) -> None:
        self._thread.start()
        self.call(self.service.start)

    def stop(self) -> None:
        try:
            self.call(self.service.stop)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(self._timeout)
            self._loop.close()

    def __enter__(self) -> BackgroundService:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
