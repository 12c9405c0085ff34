"""One simulator process: its share of the devices on one asyncio event loop.

The parent (run.py) starts it with `worker_main(conn, spec)`; the worker starts its devices along
the ramp (its share of the fleet-wide rate), fires storms at their times, and sends a snapshot
over `conn` every second (counts by state, cumulative counters, latency histogram deltas). It obeys
"storm" and "stop" messages from the parent; on "stop" it stops producing, waits up to the drain
time for every pending record to be acked, closes every session cleanly and sends a final snapshot
with each device's seq range.

Owns the loop and its devices; does not aggregate across workers (run.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import zlib
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from bench.fleet_sim.config import SimConfig
from bench.fleet_sim.device import CONNECTED, OFFLINE, STOPPED, WAITING, DeviceStats, SimDevice
from bench.fleet_sim.link import Link, SimIdentity, make_link

logger = logging.getLogger("fleet_sim.worker")


@dataclass
class WorkerSpec:
    index: int
    cfg: SimConfig
    devices: list[tuple[int, SimIdentity, str]]  # (fleet index, identity, transport)
    grpc_target: str
    seq_base: int


def worker_main(conn: Connection) -> None:
    spec: WorkerSpec = conn.recv()
    logging.basicConfig(
        level=spec.cfg.log_level.upper(),
        format=f"%(asctime)s w{spec.index} %(levelname)s %(name)s %(message)s",
    )
    try:
        asyncio.run(Worker(conn, spec).main())
    except KeyboardInterrupt:
        pass


class Worker:
    def __init__(self, conn: Connection, spec: WorkerSpec) -> None:
        self.conn = conn
        self.spec = spec
        self.cfg = spec.cfg
        self.stats = DeviceStats()
        self.devices: list[SimDevice] = []
        self._stopping = asyncio.Event()

    def _link_factory(self, ident: SimIdentity, transport: str) -> Any:
        cfg = self.cfg
        if transport == "grpc":
            return lambda: make_link("grpc", ident, self.spec.grpc_target, server_name=cfg.server_name)
        return lambda: make_link("mqtt", ident, cfg.mqtt_url, keepalive_s=cfg.mqtt_keepalive_s)

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        cfg, spec = self.cfg, self.spec
        connecting = asyncio.Semaphore(cfg.max_connecting)
        for _, ident, transport in spec.devices:
            factory: Any = self._link_factory(ident, transport)
            self.devices.append(
                SimDevice(ident, transport, factory, cfg, self.stats, seq_base=spec.seq_base,
                          fleet_size=cfg.devices, seed=zlib.crc32(f"{cfg.seed}:{ident.device_id}".encode()),
                          connecting=connecting)
            )  # fmt: skip
        # ready; the parent answers ("go", t0) once every worker is: the ramp starts at t0 for all
        self.conn.send({"ready": spec.index})
        msg = self.conn.recv()
        if msg[0] != "go":
            return
        t0 = time.monotonic() - (time.time() - float(msg[1]))  # the shared start on this clock
        tasks = [
            asyncio.ensure_future(dev.run(t0 + index / cfg.ramp_per_s))
            for dev, (index, _, _) in zip(self.devices, spec.devices, strict=True)
        ]
        loop.add_reader(self.conn.fileno(), self._on_message)
        storms = [asyncio.ensure_future(self._storm_at(t0 + s)) for s in cfg.storm_at_s]
        reporter = asyncio.ensure_future(self._report_every_second())
        await self._stopping.wait()
        for s in storms:
            s.cancel()
        await self._drain(self._drain_s)
        for dev in self.devices:
            dev.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        reporter.cancel()
        loop.remove_reader(self.conn.fileno())
        self._send(final=True)

    # ---------------------------------------------------------------- parent's messages

    _drain_s = 10.0

    def _on_message(self) -> None:
        try:
            msg = self.conn.recv()
        except (EOFError, OSError):
            self._drain_s = 0.0
            self._stopping.set()
            return
        if msg[0] == "storm":
            self.storm()
        elif msg[0] == "stop":
            self._drain_s = float(msg[1])
            self._stopping.set()

    def storm(self) -> None:
        self.stats.inc("storms")
        for dev in self.devices:
            if dev.state == CONNECTED:
                dev.kick("storm")

    async def _storm_at(self, at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        logger.warning("reconnect storm: every device drops its session")
        self.storm()

    async def _drain(self, drain_s: float) -> None:
        for dev in self.devices:
            dev.producing = False
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline and any(d.pending for d in self.devices):
            await asyncio.sleep(0.2)

    # ---------------------------------------------------------------- snapshots

    async def _report_every_second(self) -> None:
        while True:
            await asyncio.sleep(1.0 - (time.time() % 1.0))
            self._send(final=False)

    def _send(self, final: bool) -> None:
        states: dict[str, int] = {}
        pending = 0
        first_connected = 0
        for d in self.devices:
            states[d.state] = states.get(d.state, 0) + 1
            pending += len(d.pending)
            first_connected += d.first_connected_at is not None
        rep, tel = self.stats.take_hists()
        snap: dict[str, Any] = {
            "worker": self.spec.index,
            "t_wall": time.time(),
            "devices": len(self.devices),
            "connected": states.get(CONNECTED, 0),
            "waiting": states.get(WAITING, 0),
            "offline": states.get(OFFLINE, 0),
            "stopped": states.get(STOPPED, 0),
            "ever_connected": first_connected,
            "pending": pending,
            "counters": dict(self.stats.counters),
            "session_ends": dict(self.stats.session_ends),
            "report_hist": rep.to_wire(),
            "telemetry_hist": tel.to_wire(),
            "rss_mb": _rss_mb(),
            "pid": os.getpid(),
            "final": final,
        }
        if final:
            snap["per_device"] = {d.id: d.summary() for d in self.devices}
        try:
            self.conn.send(snap)
        except (BrokenPipeError, OSError):
            self._stopping.set()


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


__all__ = ["Link", "WorkerSpec", "worker_main"]


if __name__ == "__main__":
    import sys

    worker_main(Connection(int(sys.argv[1])))
