"""Ports the daemon depends on (typing.Protocol); adapters live in transport/, fakes in tests/fakes/."""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

from agent.outbox import OutboxRecord
from agent.state import DeviceReport, Inbound


class Clock(Protocol):
    def monotonic(self) -> float: ...
    def time_ms(self) -> int: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time_ms(self) -> int:
        return time.time_ns() // 1_000_000


class FleetSession(Protocol):
    """One live session with the fleet server.

    Raises (every method):
        TransportError: the link failed (retry); RateLimitedError: throttled (back off longer);
        SessionRejectedError: the server refused this device (back off to the maximum).
    """

    async def send_report(self, report: DeviceReport) -> None: ...
    async def send_telemetry(self, batch_id: int, records: list[OutboxRecord]) -> None: ...
    async def send_command_result(self, command_id: str, ok: bool, detail: str) -> None: ...
    async def receive(self) -> Inbound | None: ...
    async def close(self) -> None: ...


@runtime_checkable
class RenewCapable(Protocol):
    """A session that can carry `SyncRequest.renew` (both real adapters; test fakes may not)."""

    async def send_renew(self, csr_pem: bytes) -> None: ...


class FleetConnector(Protocol):
    async def open(self) -> FleetSession:
        """Raises: TransportError (or a subclass) when no session can be opened."""
        ...
