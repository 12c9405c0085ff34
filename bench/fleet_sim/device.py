"""One simulated device: its sessions, its telemetry outbox, its updates.

A device lives as long as the run and survives its sessions:

- **sessions**: open a `Link` (per-connection timeout), send a `DeviceReport` at once and then every
  heartbeat (a random phase per device), resend every unacked record, read downlinks; when the
  session ends (server gone, drop, storm, churn) reconnect after a full-jitter backoff (reset once
  the server has acked something in the new session). A refused identity backs off to the maximum.
- **outbox**: telemetry records get a per-device strictly increasing `seq` when produced (also while
  disconnected), stay in `pending` until a `TelemetryAck` lists them, and are resent in every new
  session. The server stores (device, seq) once and acks again what it already has, so from the
  user's side each record arrives exactly once; an ack for a seq no longer pending is counted as a
  duplicate ack (the record was resent after its first ack was lost).
- **updates**: a `DesiredState` assignment with a new deployment id starts an install task that
  walks the OTA states (updates.py) through the outbox, so a session drop mid-install loses
  nothing; while serving a model the device emits `model_metrics` windows.

Latency: send -> ack, for reports (by report sequence) and records (by seq, from its last send).
Counters and histograms are the worker's (`DeviceStats`), shared by its devices.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.fleet_sim import updates
from bench.fleet_sim.backoff import FullJitterBackoff
from bench.fleet_sim.config import SimConfig
from bench.fleet_sim.link import Link, LinkError, LinkRejected, SimIdentity
from bench.fleet_sim.stats import COUNTERS, LatencyHist
from protos.edgeloop.v1 import device_pb2 as pb

logger = logging.getLogger("fleet_sim.device")

RESEND_BATCH = 50  # records per TelemetryBatch when resending (server's telemetry_batch_max: 100)

# device states
WAITING, CONNECTING, CONNECTED, BACKOFF, OFFLINE, STOPPED = (
    "waiting", "connecting", "connected", "backoff", "offline", "stopped",
)  # fmt: skip


@dataclass
class DeviceStats:
    """One worker's counters and latency histograms (deltas since the last snapshot)."""

    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    session_ends: dict[str, int] = field(default_factory=dict)
    report_hist: LatencyHist = field(default_factory=LatencyHist)
    telemetry_hist: LatencyHist = field(default_factory=LatencyHist)

    def inc(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def ended(self, cause: str, detail: str = "") -> None:
        n = self.session_ends.get(cause, 0)
        self.session_ends[cause] = n + 1
        if not n and detail:
            logger.warning("first session ended by %s: %s", cause, detail[:300])

    def take_hists(self) -> tuple[LatencyHist, LatencyHist]:
        r, t = self.report_hist, self.telemetry_hist
        self.report_hist, self.telemetry_hist = LatencyHist(), LatencyHist()
        return r, t


class _SessionEnd(Exception):
    def __init__(self, reason: str, clean: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.clean = reason, clean


class SimDevice:
    def __init__(
        self,
        ident: SimIdentity,
        transport: str,
        link_factory: Callable[[], Link],
        cfg: SimConfig,
        stats: DeviceStats,
        *,
        seq_base: int,
        fleet_size: int,
        seed: int,
        connecting: asyncio.Semaphore | None = None,
    ) -> None:
        self.id = ident.device_id
        self.transport = transport
        self._new_link = link_factory
        self.cfg = cfg
        self.stats = stats
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        self.backoff = FullJitterBackoff(cfg.backoff_initial_s, cfg.backoff_max_s, rng=self.rng)
        self.state = WAITING
        self.ever_connected = False
        self.first_connected_at: float | None = None
        # outbox
        self.seq_first = seq_base + 1
        self.next_seq = seq_base + 1
        self.pending: dict[int, list[Any]] = {}  # seq -> [TelemetryRecord, last sent monotonic or 0]
        self.acked = 0
        self.producing = True
        # reports
        self.report_seq = 0
        self.report_sent: dict[int, float] = {}
        self.hb_phase = self.rng.uniform(0, cfg.heartbeat_s)
        # updates
        self.kind_default = updates.pick_kind(cfg.update, self.rng.random())
        self.site = updates.make_site_for(self.np_rng)
        self.serving: updates.Behaviour | None = None
        self.previous: updates.Behaviour | None = None
        self.deployment_id = ""
        self.generation = 0
        self.transition = 0
        self._installs: set[asyncio.Task[None]] = set()
        self.outcomes: dict[str, str] = {}  # deployment id -> committed | failed
        # faults
        self.churn_rate_s = cfg.churn_per_min / max(1, fleet_size) / 60.0
        self.drop_rate_s = cfg.drop_rate / 60.0
        self._link: Link | None = None
        self._write_lock = asyncio.Lock()
        self._kick: asyncio.Future[str] | None = None
        self._stop = asyncio.Event()
        self._got_ack = False
        self._connecting = connecting or asyncio.Semaphore(1)

    # ---------------------------------------------------------------- control (same loop)

    def kick(self, reason: str) -> None:
        """End the current session now (storm, fault)."""
        if self._kick is not None and not self._kick.done():
            self._kick.set_result(reason)

    def stop(self) -> None:
        self._stop.set()
        self.kick("stop")

    @property
    def seq_last(self) -> int:
        return self.next_seq - 1

    def summary(self) -> dict[str, Any]:
        return {"transport": self.transport, "seq_first": self.seq_first, "seq_last": self.seq_last,
                "acked": self.acked, "pending": len(self.pending), "state": self.state,
                "update_kind": self.kind_default, "outcomes": dict(self.outcomes)}  # fmt: skip

    # ---------------------------------------------------------------- lifetime

    async def run(self, start_at: float) -> None:
        producer = asyncio.ensure_future(self._produce())
        try:
            if await self._sleep(start_at - time.monotonic()):
                return
            while not self._stop.is_set():
                try:
                    delay = await self._one_session()
                except Exception:  # a simulator bug must not silently remove a device from the fleet
                    logger.exception("%s: session failed unexpectedly", self.id)
                    self.stats.ended("simulator error")
                    delay = self.backoff.next_delay()
                if self._stop.is_set():
                    break
                if isinstance(delay, tuple):  # churn: away for a while, then back without backoff
                    self.state = OFFLINE
                    await self._sleep(delay[0])
                else:
                    self.state = BACKOFF
                    await self._sleep(delay)
        finally:
            self.state = STOPPED
            producer.cancel()
            for t in list(self._installs):
                t.cancel()

    async def _sleep(self, seconds: float) -> bool:
        """Sleep, or return True at once when the device is stopped."""
        if seconds <= 0:
            return self._stop.is_set()
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _one_session(self) -> float | tuple[float]:
        self.state = CONNECTING
        link = self._new_link()
        try:
            async with self._connecting:  # the connect timeout counts from here
                await link.open(self.cfg.connect_timeout_s)
        except LinkRejected as err:
            self.stats.inc("rejected_sessions")
            logger.warning("%s: session refused: %s", self.id, err)
            return self.cfg.backoff_max_s * self.rng.uniform(0.5, 1.0)
        except LinkError as err:
            self.stats.inc("connect_failures")
            logger.info("%s: connect failed: %s", self.id, err)
            return self.backoff.next_delay()
        loop = asyncio.get_running_loop()
        self._kick = loop.create_future()
        self._link, self._got_ack = link, False
        self.state = CONNECTED
        self.stats.inc("connects")
        if self.ever_connected:
            self.stats.inc("reconnects")
        self.ever_connected = True
        if self.first_connected_at is None:
            self.first_connected_at = time.monotonic()
        reader = asyncio.ensure_future(self._read(link))
        ticker = asyncio.ensure_future(self._heartbeats(link))
        reason = ""
        try:
            done, _ = await asyncio.wait({reader, ticker, self._kick}, return_when=asyncio.FIRST_COMPLETED)
            if self._kick.done():
                reason = self._kick.result()
                self.stats.ended(reason)
            else:
                task = next(iter(done))
                err = task.exception() if not task.cancelled() else None
                reason = f"{type(err).__name__}: {err}" if err else "ended"
                # the gRPC status name (or the error type) is the cause: "UNAVAILABLE", "LinkError"
                cause = str(err).split(":", 1)[0] if isinstance(err, LinkError) else type(err).__name__
                self.stats.ended(cause if err else "ended", f"{self.id}: {reason}")
                if isinstance(err, LinkRejected):
                    self.stats.inc("rejected_sessions")
        finally:
            self._link = None
            self.report_sent.clear()
            for t in (reader, ticker):
                t.cancel()
            await asyncio.gather(reader, ticker, return_exceptions=True)
            await link.close()
        logger.info("%s: session ended: %s", self.id, reason)
        if reason == "churn":
            return (self.rng.expovariate(1 / self.cfg.churn_offline_s),)
        if reason == "stop":
            return 0.0
        if not self._got_ack:
            return self.backoff.next_delay()
        self.backoff.reset()
        return self.backoff.next_delay()

    # ---------------------------------------------------------------- sending

    async def _write(self, link: Link, req: pb.SyncRequest) -> None:
        if self.cfg.delay_ms:
            await asyncio.sleep(self.cfg.delay_ms / 1000 * self.rng.uniform(0.5, 1.5))
        async with self._write_lock:
            await link.send(req)

    async def _send_report(self, link: Link) -> None:
        self.report_seq += 1
        seq = self.report_seq
        slots = []
        if self.serving is not None:
            b = self.serving
            slots.append(
                pb.SlotState(slot="default", model_name=b.name, model_version=b.version, sha256=b.sha256)
            )
        req = pb.SyncRequest(
            report=pb.DeviceReport(
                device_id=self.id, sequence=seq, timestamp_ms=int(time.time() * 1000),
                agent_version="fleet-sim", profile="generic-x86", applied_generation=self.generation,
                slots=slots, health=pb.HEALTH_OK, telemetry_queued=len(self.pending),
            )
        )  # fmt: skip
        self.report_sent[seq] = time.monotonic()
        await self._write(link, req)
        self.stats.inc("reports_sent")

    async def _send_records(self, link: Link, seqs: list[int]) -> None:
        """Write these pending records (batches of RESEND_BATCH); a second send counts as a resend."""
        for i in range(0, len(seqs), RESEND_BATCH):
            chunk = [s for s in seqs[i : i + RESEND_BATCH] if s in self.pending]
            if not chunk:
                continue
            now = time.monotonic()
            resent = 0
            for s in chunk:
                resent += self.pending[s][1] != 0.0
                self.pending[s][1] = now
            batch = pb.TelemetryBatch(batch_id=chunk[0], records=[self.pending[s][0] for s in chunk])
            await self._write(link, pb.SyncRequest(telemetry=batch))
            if resent:
                self.stats.inc("records_resent", resent)

    async def emit(self, kind: str, payload: bytes = b"", metrics: dict[str, float] | None = None) -> None:
        """A new telemetry record: queued, and sent now when a session is up."""
        seq = self.next_seq
        self.next_seq += 1
        rec = pb.TelemetryRecord(seq=seq, timestamp_ms=int(time.time() * 1000), kind=kind,
                                 metrics=metrics or {}, payload=payload)  # fmt: skip
        self.pending[seq] = [rec, 0.0]
        self.stats.inc("records_sent")  # produced; sent now, or with the next session
        link = self._link
        if link is not None:
            try:
                await self._send_records(link, [seq])
            except LinkError:
                self.kick("send failed")

    async def _heartbeats(self, link: Link) -> None:
        await self._send_report(link)
        backlog = sorted(self.pending)
        if backlog:
            await self._send_records(link, backlog)
        hb, ack_timeout = self.cfg.heartbeat_s, self.cfg.ack_timeout_s
        next_hb = self.hb_phase + hb * (math.floor((time.monotonic() - self.hb_phase) / hb) + 1)
        while True:
            now = time.monotonic()
            oldest = min((sent for _, sent in self.pending.values() if sent), default=math.inf)
            wait = min(next_hb, oldest + ack_timeout) - now
            if self.drop_rate_s or self.churn_rate_s:
                fault_in = self.rng.expovariate(self.drop_rate_s + self.churn_rate_s)
                if fault_in < wait:
                    await asyncio.sleep(fault_in)
                    churn = self.rng.random() < self.churn_rate_s / (self.drop_rate_s + self.churn_rate_s)
                    self.stats.inc("churns" if churn else "drops")
                    self.kick("churn" if churn else "drop")
                    return
            await asyncio.sleep(max(0.0, wait))
            now = time.monotonic()
            # no ack within ack_timeout_s (on MQTT the broker stays up while the server is away,
            # and QoS 1 is per hop): send again in this session; the server acks a stored seq again
            stale = sorted(s for s, (_, sent) in self.pending.items() if sent and now - sent >= ack_timeout)
            if stale:
                await self._send_records(link, stale)
            if now >= next_hb - 0.01:  # the loop may wake a clock tick early
                next_hb += hb * (math.floor((now - next_hb) / hb) + 1)
                await self._send_report(link)

    async def _produce(self) -> None:
        """Telemetry at `telemetry_per_min` and model_metrics windows while serving a model."""
        tel_every = 60.0 / self.cfg.telemetry_per_min if self.cfg.telemetry_per_min else math.inf
        win_every = self.cfg.window_s()
        now = time.monotonic()
        next_tel = now + self.rng.uniform(0, tel_every) if tel_every < math.inf else math.inf
        next_win = now + self.rng.uniform(0, win_every)
        while self.producing:
            wake = min(next_tel, next_win)
            await asyncio.sleep(max(0.0, wake - time.monotonic()))
            if not self.producing:
                return
            now = time.monotonic()
            if now >= next_tel:
                next_tel += tel_every
                await self.emit("sim", metrics={"value": round(self.rng.gauss(20, 2), 3)})
            if now >= next_win:
                start_ms = int(time.time() * 1000 - win_every * 1000)
                next_win += win_every
                b = self.serving
                if b is not None and b.loads:
                    payload = updates.window_record(
                        b, self.previous, self.site, self.np_rng,
                        deployment_id=self.deployment_id, start_ms=start_ms, window_s=win_every,
                    )  # fmt: skip
                    self.stats.inc("windows_sent")
                    await self.emit("model_metrics", payload)

    # ---------------------------------------------------------------- receiving

    async def _read(self, link: Link) -> None:
        while True:
            msg = await link.recv()
            if isinstance(msg, pb.DesiredState):
                self._desired(msg)
                continue
            which = msg.WhichOneof("msg")
            if which == "telemetry_ack":
                self._telemetry_ack(msg.telemetry_ack)
            elif which == "report_ack":
                sent = self.report_sent.pop(msg.report_ack.sequence, None)
                if sent is not None:
                    self._got_ack = True
                    self.stats.report_hist.add((time.monotonic() - sent) * 1000)
                    self.stats.inc("reports_refused" if msg.report_ack.rejected_reason else "reports_acked")
            elif which == "desired":
                self._desired(msg.desired)
            elif which == "command":
                cmd = msg.command
                ok = cmd.WhichOneof("kind") == "flush_telemetry"
                result = pb.CommandResult(
                    command_id=cmd.command_id, ok=ok, detail="" if ok else "simulated device"
                )
                if ok and self.pending:
                    await self._send_records(link, sorted(self.pending))
                await self._write(link, pb.SyncRequest(command_result=result))

    def _telemetry_ack(self, ack: pb.TelemetryAck) -> None:
        now = time.monotonic()
        self._got_ack = True
        for seq in ack.seqs:
            entry = self.pending.pop(seq, None)
            if entry is not None:
                self.acked += 1
                self.stats.inc("records_acked")
                if entry[1]:
                    self.stats.telemetry_hist.add((now - entry[1]) * 1000)
            elif self.seq_first <= seq < self.next_seq:
                self.stats.inc("duplicates_acked")
        for rej in ack.rejected:
            if self.pending.pop(rej.seq, None) is not None:
                self.stats.inc("records_rejected")
                logger.warning("%s: record %d rejected: %s", self.id, rej.seq, rej.reason)

    def _desired(self, desired: pb.DesiredState) -> None:
        if desired.generation < self.generation:
            return
        self.generation = desired.generation
        for a in desired.models:
            if a.deployment_id and a.deployment_id != self.deployment_id:
                self.deployment_id = a.deployment_id
                task = asyncio.ensure_future(self._install(a))
                self._installs.add(task)
                task.add_done_callback(self._installs.discard)

    async def _install(self, a: pb.ModelAssignment) -> None:
        kind = self.cfg.update_by_version.get(a.model_version, self.kind_default)
        target = updates.behaviour_for(kind, a.model_name, a.model_version)
        S, E = updates.UpdateState, updates.UpdateEvent
        for i, (src, event, dst) in enumerate(updates.INSTALL_STEPS):
            if self.deployment_id != a.deployment_id:
                return  # superseded by a newer assignment
            await asyncio.sleep(self.cfg.install_s / len(updates.INSTALL_STEPS) * self.rng.uniform(0.5, 1.5))
            if i == 3 and not target.loads:
                self.transition += 1
                detail = "load failed: INVALID_PROTOBUF (simulated)"
                await self._ota(a, src, E.STAGE_FAILED, S.FAILED, detail)
                self.stats.inc("installs_failed")
                self.outcomes[a.deployment_id] = "failed"
                return
            if dst == S.WATCHING:
                self.previous, self.serving = self.serving, target
            self.transition += 1
            await self._ota(a, src, event, dst, "")
        self.stats.inc("installs_committed")
        self.outcomes[a.deployment_id] = "committed"
        link = self._link
        if link is not None:
            try:
                await self._send_report(link)
            except LinkError:
                self.kick("send failed")

    async def _ota(self, a: pb.ModelAssignment, src: Any, event: Any, dst: Any, detail: str) -> None:
        payload = updates.ota_payload(a, self.transition, src, event, dst, detail)
        await self.emit("ota", payload, {"transition": float(self.transition)})
