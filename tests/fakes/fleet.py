"""FakeFleet: an in-memory fleet server behind the agent's FleetConnector port.

Stores telemetry by seq (so duplicates are visible, not hidden), acks like the real server,
and can be told to fail: refuse the next N connections, drop a session after K messages, or
reject the device outright. Like the real server it can refuse single records (`refuse_kind`:
records of that kind are listed in `TelemetryAcked.rejected`, never stored) and reports
(`refuse_reports`: the reason sent in `ReportAcked.rejected_reason`).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

from agent.errors import TransportError
from agent.outbox import OutboxRecord
from agent.state import DesiredState, DeviceReport, Inbound, ReportAcked, TelemetryAcked
from agent.transport.grpc_fleet import SessionRejectedError


@dataclass
class FakeFleet:
    desired: DesiredState = field(default_factory=lambda: DesiredState(generation=1))
    refuse_next: int = 0
    reject: bool = False
    drop_after_messages: int | None = None  # per session; acks of the dropped message are lost
    received: Counter[int] = field(default_factory=Counter)
    reports: list[DeviceReport] = field(default_factory=list)
    sessions: int = 0
    attempts: int = 0
    refuse_kind: str = ""
    refuse_reports: str = ""
    refused: Counter[int] = field(default_factory=Counter)  # seq -> times sent and refused
    # Telemetry messages lost in transit with the session still up (as MQTT QoS 1, which is per
    # hop, can lose one across a broker restart): neither stored nor acked.
    lose_telemetry: int = 0

    async def open(self) -> FakeSession:
        self.attempts += 1
        if self.reject:
            raise SessionRejectedError("device revoked")
        if self.refuse_next > 0:
            self.refuse_next -= 1
            raise TransportError("connection refused")
        self.sessions += 1
        return FakeSession(self)


class FakeSession:
    def __init__(self, fleet: FakeFleet) -> None:
        self.fleet = fleet
        self.inbox: asyncio.Queue[Inbound | Exception | None] = asyncio.Queue()
        self.inbox.put_nowait(fleet.desired)
        self.messages = 0
        self.dead = False

    def _count(self) -> None:
        if self.dead:
            raise TransportError("stream closed")
        self.messages += 1
        limit = self.fleet.drop_after_messages
        if limit is not None and self.messages > limit:
            self.dead = True
            self.inbox.put_nowait(TransportError("connection reset"))
            raise TransportError("connection reset")

    async def send_report(self, report: DeviceReport) -> None:
        self._count()
        if self.fleet.refuse_reports:
            self.inbox.put_nowait(ReportAcked(report.sequence, rejected_reason=self.fleet.refuse_reports))
            return
        self.fleet.reports.append(report)
        self.inbox.put_nowait(ReportAcked(report.sequence))

    async def send_telemetry(self, batch_id: int, records: list[OutboxRecord]) -> None:
        self._count()
        if self.fleet.lose_telemetry > 0:
            self.fleet.lose_telemetry -= 1
            return
        refused = [r for r in records if self.fleet.refuse_kind and r.kind == self.fleet.refuse_kind]
        stored = [r for r in records if r not in refused]
        for r in stored:
            self.fleet.received[r.seq] += 1
        for r in refused:
            self.fleet.refused[r.seq] += 1
        self.inbox.put_nowait(
            TelemetryAcked(
                batch_id,
                tuple(r.seq for r in stored),
                rejected=tuple((r.seq, "seq_out_of_range") for r in refused),
            )
        )

    async def send_command_result(self, command_id: str, ok: bool, detail: str) -> None:
        self._count()

    async def receive(self) -> Inbound | None:
        item = await self.inbox.get()
        if isinstance(item, Exception):
            raise item
        return item

    async def close(self) -> None:
        self.dead = True
        self.inbox.put_nowait(None)


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    def time_ms(self) -> int:
        return int(self.monotonic() * 1000)
