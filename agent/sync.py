"""The Sync loop: hold a session with the fleet server, reconnect with backoff and jitter.

Inside a session the agent sends a DeviceReport every `report_interval_s`, drains the telemetry
outbox in batches (a window of `max_in_flight_batches`, deleting records only when the server
acks them), and applies DesiredState through `agent.reconcile`. It stays under the server's
message rate on its own. On stop it flushes what it can within `shutdown_flush_s`.

Certificate renewal is session-level and the same on every transport: when a `Renewer` is given
and the certificate is near its end, the session sends a renew request (sessions that can:
`RenewCapable`); on the server's answer the new identity is installed and the loop reconnects at
once with it. The first acked report of a session lets the renewer drop the previous key pair.

Owns session and backoff logic; does not know gRPC or MQTT (a connector is injected) and does not
apply DesiredState itself (`agent.reconciler.Reconciler`, re-exported here with its `ModelExecutor`
port) or execute model installs (an executor plugged into the reconciler).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent import __version__
from agent.backoff import Backoff
from agent.config import AgentConfig
from agent.errors import RateLimitedError, TransportError
from agent.fsutil import atomic_write
from agent.outbox import TelemetryOutbox
from agent.ports import Clock, FleetConnector, FleetSession, RenewCapable
from agent.reconciler import ModelExecutor, Reconciler
from agent.renewal import Renewer
from agent.state import (
    CertificateRenewed,
    CommandReceived,
    DesiredState,
    DeviceReport,
    ObservedState,
    ReportAcked,
    Resources,
    TelemetryAcked,
)
from agent.transport.grpc_fleet import SessionRejectedError

__all__ = ["ModelExecutor", "Reconciler", "SyncLoop", "SyncStatus"]  # the first two: agent.reconciler

logger = logging.getLogger(__name__)


class _RenewedReconnect(Exception):
    """The identity changed: end this session and open the next one at once with the new certificate."""


@dataclass
class SyncStatus:
    connected: bool = False
    sessions_opened: int = 0
    last_error: str = ""
    reports_acked: int = 0
    telemetry_acked: int = 0
    reports_rejected: int = 0
    last_rejection: str = ""
    deferred: list[str] = field(default_factory=list)


class SyncLoop:
    def __init__(
        self,
        *,
        config: AgentConfig,
        device_id: str,
        outbox: TelemetryOutbox,
        connector: FleetConnector,
        reconciler: Reconciler,
        clock: Clock,
        resources: Callable[[], Resources],
        status_path: Path,
        rng: random.Random | None = None,
        renewer: Renewer | None = None,
    ) -> None:
        self._cfg = config
        self._device_id = device_id
        self._outbox = outbox
        self._connector = connector
        self._reconciler = reconciler
        self._clock = clock
        self._resources = resources
        self._status_path = status_path
        self._renewer = renewer
        s = config.sync
        self._backoff = Backoff(
            s.backoff_initial_s,
            s.backoff_max_s,
            s.backoff_multiplier,
            s.backoff_jitter,
            rng or random.Random(),
        )
        self.telemetry_ready = asyncio.Event()
        self.status = SyncStatus()
        self._report_seq = 0
        self._batch_seq = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            delay = await self._one_session(stop)
            if stop.is_set():
                break
            logger.info("sync reconnect in %.2fs attempt=%d", delay, self._backoff.attempt)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)

    async def _one_session(self, stop: asyncio.Event) -> float:
        started = self._clock.monotonic()
        try:
            session = await self._connector.open()
        except TransportError as err:
            return self._failed(err)
        self.status.connected, self.status.sessions_opened = True, self.status.sessions_opened + 1
        logger.info("sync session open device_id=%s session=%d", self._device_id, self.status.sessions_opened)
        try:
            await _Session(self, session).run(stop)
            self.status.last_error = ""
        except _RenewedReconnect:
            logger.info("device certificate renewed: reconnecting device_id=%s", self._device_id)
            self.status.last_error = ""
            self._backoff.reset()
            return 0.0
        except TransportError as err:
            return self._failed(err, started)
        except Exception as err:  # a bug must not kill the daemon: log it, back off, reconnect
            logger.exception("sync session crashed device_id=%s", self._device_id)
            return self._failed(TransportError(f"session crashed: {err!r}"), started)
        finally:
            self.status.connected = False
            await session.close()
            self.write_status()
        if self._clock.monotonic() - started >= self._cfg.sync.healthy_session_s:
            self._backoff.reset()
        return self._backoff.next_delay()

    def _failed(self, err: TransportError, started: float | None = None) -> float:
        self.status.last_error = str(err)
        if started is not None and self._clock.monotonic() - started >= self._cfg.sync.healthy_session_s:
            self._backoff.reset()
        delay = self._backoff.next_delay()
        if isinstance(err, SessionRejectedError):
            delay = self._cfg.sync.backoff_max_s
        elif isinstance(err, RateLimitedError):
            delay = max(delay, 5.0)
        logger.warning("sync failed device_id=%s error=%s", self._device_id, err)
        self.write_status()
        return delay

    def make_report(self) -> DeviceReport:
        self._report_seq += 1
        stats = self._outbox.stats()
        observed: ObservedState = self._reconciler.observed
        return DeviceReport(
            device_id=self._device_id,
            sequence=self._report_seq,
            timestamp_ms=self._clock.time_ms(),
            agent_version=__version__,
            profile=self._cfg.device.profile,
            observed=observed,
            resources=self._resources(),
            telemetry_dropped_total=stats.dropped_total,
            telemetry_queued=stats.queued,
        )

    def next_batch_id(self) -> int:
        self._batch_seq += 1
        return self._batch_seq

    def write_status(self) -> None:
        stats = self._outbox.stats()
        data = {
            "device_id": self._device_id,
            "connected": self.status.connected,
            "sessions_opened": self.status.sessions_opened,
            "last_error": self.status.last_error,
            "reports_acked": self.status.reports_acked,
            "telemetry_acked": self.status.telemetry_acked,
            "telemetry_queued": stats.queued,
            "telemetry_dropped_total": stats.dropped_total,
            "telemetry_rejected_total": stats.rejected_total,
            "reports_rejected": self.status.reports_rejected,
            "last_rejection": self.status.last_rejection,
            "telemetry_last_seq": stats.last_seq,
            "applied_generation": self._reconciler.observed.applied_generation,
            "deferred": self._reconciler.deferred,
            "updated_ms": self._clock.time_ms(),
        }
        try:
            atomic_write(self._status_path, json.dumps(data).encode())
        except OSError as err:
            logger.warning("cannot write status file %s: %s", self._status_path, err)


class _Session:
    """State of one open session: in-flight batches and the send pacing."""

    def __init__(self, loop: SyncLoop, session: FleetSession) -> None:
        self.loop = loop
        self.session = session
        self.succeeded = False  # a report was acked in this session
        self.in_flight: dict[int, float] = {}  # batch id -> monotonic send time (ack timeout)
        self.cursor = 0  # highest seq sent in this session; unacked records are resent next session
        self.acked = asyncio.Event()
        self.report_acked = asyncio.Event()

    @property
    def _settings(self) -> tuple[float, int]:
        s = self.loop._reconciler.observed.settings
        return float(s.report_interval_s), s.telemetry_batch_max

    def _min_gap_s(self) -> float:
        rate = max(1, self.loop._reconciler.observed.settings.max_messages_per_s)
        return 1.0 / (rate * 0.8)

    async def run(self, stop: asyncio.Event) -> None:
        receiver = asyncio.create_task(self._receive())
        sender = asyncio.create_task(self._send(stop))
        done, _ = await asyncio.wait({receiver, sender}, return_when=asyncio.FIRST_COMPLETED)
        for task in (receiver, sender):
            if task not in done:
                task.cancel()
        for task in (receiver, sender):
            if task not in done:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for task in done:
            task.result()  # re-raise the first failure (TransportError usually)

    async def _receive(self) -> None:
        while True:
            msg = await self.session.receive()
            if msg is None:
                raise TransportError("server closed the session")
            if isinstance(msg, DesiredState):
                self.loop._reconciler.apply(msg)
            elif isinstance(msg, TelemetryAcked):
                self.in_flight.pop(msg.batch_id, None)
                self.loop.status.telemetry_acked += self.loop._outbox.ack(list(msg.seqs))
                if msg.rejected:
                    self._rejected_telemetry(msg)
                self.acked.set()
            elif isinstance(msg, ReportAcked):
                if msg.rejected_reason:
                    self.loop.status.reports_rejected += 1
                    self.loop.status.last_rejection = f"report {msg.sequence}: {msg.rejected_reason}"
                    logger.warning(
                        "report refused by the server sequence=%d reason=%r",
                        msg.sequence,
                        msg.rejected_reason,
                    )
                else:
                    self.loop.status.reports_acked += 1
                    if not self.succeeded and self.loop._renewer is not None:
                        self.loop._renewer.session_succeeded()
                    self.succeeded = True
                self.report_acked.set()
            elif isinstance(msg, CommandReceived):
                await self._command(msg)
            elif isinstance(msg, CertificateRenewed):
                renewer = self.loop._renewer
                if renewer is not None and renewer.finish(msg):
                    raise _RenewedReconnect()

    def _rejected_telemetry(self, msg: TelemetryAcked) -> None:
        """The server refused these records for good: drop them (counted), never resend them."""
        dropped = self.loop._outbox.discard([seq for seq, _ in msg.rejected])
        seq, reason = msg.rejected[0]
        self.loop.status.last_rejection = f"telemetry seq {seq}: {reason}"
        logger.warning(
            "telemetry refused by the server batch_id=%d count=%d discarded=%d first_seq=%d reason=%r",
            msg.batch_id,
            len(msg.rejected),
            dropped,
            seq,
            reason,
        )

    async def _command(self, cmd: CommandReceived) -> None:
        if cmd.kind == "flush_telemetry":
            self.loop.telemetry_ready.set()
            await self.session.send_command_result(cmd.command_id, True, "flush scheduled")
        else:
            await self.session.send_command_result(cmd.command_id, False, f"unsupported command {cmd.kind!r}")

    async def _maybe_renew(self) -> None:
        renewer, now_ms = self.loop._renewer, self.loop._clock.time_ms()
        if renewer is None or not isinstance(self.session, RenewCapable) or not renewer.due(now_ms):
            return
        logger.info("device certificate near its end: requesting renewal device_id=%s", self.loop._device_id)
        await self.session.send_renew(renewer.start(self.loop._device_id, now_ms))

    async def _send(self, stop: asyncio.Event) -> None:
        clock = self.loop._clock
        next_report = clock.monotonic()
        while True:
            now = clock.monotonic()
            if now >= next_report:
                await self._maybe_renew()
                await self.session.send_report(self.loop.make_report())
                self.loop.write_status()
                interval, _ = self._settings
                next_report = now + interval
                await asyncio.sleep(self._min_gap_s())
                continue
            if await self._send_telemetry():
                await asyncio.sleep(self._min_gap_s())
                continue
            if stop.is_set():
                await self._drain()
                return
            self._check_ack_timeout(clock.monotonic())
            self.loop.telemetry_ready.clear()
            self.acked.clear()
            wait_for = max(0.0, min(next_report - clock.monotonic(), self._ack_timeout_s() / 4))
            await _wait_any((self.loop.telemetry_ready, self.acked, stop), wait_for)

    def _ack_timeout_s(self) -> float:
        return max(0.1, self.loop._cfg.sync.ack_timeout_s)

    def _check_ack_timeout(self, now: float) -> None:
        """A batch unacked past `sync.ack_timeout_s` ends the session (see SyncConfig)."""
        if not self.in_flight:
            return
        batch_id, sent = next(iter(self.in_flight.items()))  # the oldest: sent in insertion order
        if now - sent > self._ack_timeout_s():
            raise TransportError(
                f"telemetry batch {batch_id} not acked within {self._ack_timeout_s():.3g}s; "
                "reconnecting to resend unacked records"
            )

    async def _send_telemetry(self) -> bool:
        if len(self.in_flight) >= self.loop._cfg.telemetry.max_in_flight_batches:
            return False
        _, batch_max = self._settings
        records = self.loop._outbox.peek(
            after_seq=self.cursor, limit=min(batch_max, self.loop._cfg.telemetry.batch_max)
        )
        if not records:
            return False
        batch_id = self.loop.next_batch_id()
        self.in_flight[batch_id] = self.loop._clock.monotonic()
        self.cursor = records[-1].seq
        await self.session.send_telemetry(batch_id, records)
        return True

    async def _drain(self) -> None:
        """On shutdown: send what is queued and wait for acks, then a final report with the
        final counters (queued, dropped), all within shutdown_flush_s."""
        clock = self.loop._clock
        deadline = clock.monotonic() + self.loop._cfg.sync.shutdown_flush_s
        while clock.monotonic() < deadline:
            sent = await self._send_telemetry()
            if not sent and not self.in_flight and self.loop._outbox.stats().queued == 0:
                break
            if not sent:
                self.acked.clear()
                await _wait_any((self.acked,), max(0.0, deadline - clock.monotonic()))
            else:
                await asyncio.sleep(self._min_gap_s())
        else:
            logger.warning("shutdown flush timed out queued=%d", self.loop._outbox.stats().queued)
        self.report_acked.clear()
        await self.session.send_report(self.loop.make_report())
        await _wait_any((self.report_acked,), max(0.1, deadline - clock.monotonic()))


async def _wait_any(events: tuple[asyncio.Event, ...], timeout: float) -> None:
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
