"""`FleetSim`: enroll (cached), start the worker processes, aggregate their snapshots.

Workers are fresh interpreters (`python -m bench.fleet_sim.worker FD`, not a fork: the parent has
used gRPC for enrollment and a forked gRPC is unsafe; not multiprocessing's spawn either, which
re-imports the caller's main script), one per 2,500 devices by default, each with its own event
loop, talking to the parent over a socket pair (`multiprocessing.connection.Connection`). A
reader thread in the parent collects every worker's per-second snapshot; a sampler folds them into
the fleet's timeline once a second and watches the connected count for outages (storms, a server
restart) to time the recovery. See `bench/fleet_sim/__init__.py` for the API.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from bench.fleet_sim.config import SimConfig
from bench.fleet_sim.enroll import ensure_identities
from bench.fleet_sim.stats import COUNTERS, LatencyHist, RecoveryTracker, SimStats, add_counts
from bench.fleet_sim.worker import WorkerSpec

logger = logging.getLogger("fleet_sim")
# acks count as steady state (SimStats.held_*) once the whole fleet has been connected this long:
# the reports and backlogs sent while devices came back are acked in the first seconds after
HELD_GRACE_S = 10.0
ROOT = Path(__file__).resolve().parents[2]  # the checkout: workers run `python -m bench.fleet_sim.worker`


class FleetSim:
    def __init__(self, cfg: SimConfig, on_enrolled: Callable[[int], None] | None = None) -> None:
        self.cfg = cfg
        self._on_enrolled = on_enrolled or (lambda n: None)
        self._procs: list[Any] = []
        self._conns: list[Connection] = []
        self._latest: dict[int, dict[str, Any]] = {}
        self._finals: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._report = LatencyHist()
        self._telemetry = LatencyHist()
        self._sec_report = LatencyHist()
        self._sec_telemetry = LatencyHist()
        self._held_report = LatencyHist()
        self._held_telemetry = LatencyHist()
        self._ends: dict[int, dict[str, int]] = {}
        self._timeline: list[dict[str, Any]] = []
        self._tracker = RecoveryTracker(cfg.devices)
        self._t0 = 0.0
        self._all_connected_s: float | None = None
        self._peak = 0
        self._stop_sampler = threading.Event()
        self._stopping = False
        self._held_since: float | None = None
        self._threads: list[threading.Thread] = []
        self._rss: dict[int, float] = {}

    # ---------------------------------------------------------------- control

    def start(self) -> None:
        cfg = self.cfg
        idents, sync_endpoint = ensure_identities(cfg, self._on_enrolled)
        grpc_target = cfg.grpc_target or sync_endpoint
        if cfg.transport != "mqtt" and not grpc_target:
            raise SystemExit("no gRPC device endpoint: pass grpc_target (host:port)")
        seq_base = int(time.time() * 1000) * 1000  # per run: never collides with an earlier run's seqs
        shares: list[list[tuple[int, Any, str]]] = [[] for _ in range(cfg.workers)]
        for i, ident in enumerate(idents):
            shares[i % cfg.workers].append((i, ident, cfg.transport_of(i)))
        for w, devs in enumerate(shares):
            parent, child = socket.socketpair()
            spec = WorkerSpec(w, cfg, devs, grpc_target, seq_base)
            env = dict(
                os.environ,
                PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            )
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench.fleet_sim.worker", str(child.fileno())],
                pass_fds=[child.fileno()],
                cwd=ROOT,
                env=env,
            )
            child.close()
            conn = Connection(parent.detach())
            conn.send(spec)
            self._procs.append(proc)
            self._conns.append(conn)
        for conn, proc in zip(self._conns, self._procs, strict=True):  # workers import, build devices
            while not conn.poll(1.0):
                if proc.poll() is not None:
                    self.stop(drain_s=0)
                    raise RuntimeError(f"fleet-sim worker pid {proc.pid} exited with {proc.returncode}")
            conn.recv()
        self._t0 = time.time()  # the ramp starts now in every worker
        for conn in self._conns:
            conn.send(("go", self._t0))
        for target, name in ((self._read_loop, "fleet-sim-reader"), (self._sample_loop, "fleet-sim-sampler")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        for at in cfg.storm_at_s:
            threading.Timer(at, lambda at=at: self._tracker.storm(at)).start()

    def storm(self) -> None:
        """Every device drops its session now (and reconnects with its backoff)."""
        with self._lock:
            self._tracker.storm(time.time() - self._t0)
        for c in self._conns:
            c.send(("storm",))

    def wait_connected(self, timeout_s: float, count: int | None = None) -> bool:
        """True once `count` (default: every) device is connected at the same time."""
        want = self.cfg.devices if count is None else count
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.stats().connected >= want:
                return True
            time.sleep(0.2)
        return False

    def stop(self, drain_s: float = 10.0) -> SimStats:
        """Stop producing, wait up to `drain_s` for every record to be acked, close cleanly."""
        with self._lock:
            self._stopping = True  # the sessions closing now are no outage
        for c in self._conns:
            try:
                c.send(("stop", drain_s))
            except OSError:
                pass
        deadline = time.monotonic() + drain_s + 60
        for p in self._procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("worker pid %d did not stop; terminating", p.pid)
                p.terminate()
                p.wait(5)
        self._stop_sampler.set()
        for t in self._threads:
            t.join(5)
        stats = self.stats(final=True)
        if self.cfg.json_out is not None:
            self.cfg.json_out.parent.mkdir(parents=True, exist_ok=True)
            self.cfg.json_out.write_text(json.dumps(stats.to_dict(), indent=1))
        return stats

    def run(self, on_tick: Callable[[SimStats], None] | None = None) -> SimStats:
        """Start, wait for the ramp, hold `duration_s`, stop. Returns the final stats."""
        self.start()
        try:
            ramp_s = self.cfg.devices / self.cfg.ramp_per_s
            end = time.monotonic() + ramp_s + self.cfg.duration_s
            while time.monotonic() < end:
                time.sleep(min(1.0, end - time.monotonic()))
                if on_tick is not None:
                    on_tick(self.stats())
        finally:
            final = self.stop()
        return final

    # ---------------------------------------------------------------- aggregation

    def _read_loop(self) -> None:
        live = list(self._conns)
        while live:
            for c in wait(live, timeout=1.0):
                try:
                    snap = c.recv()
                except (EOFError, OSError):
                    live.remove(c)  # type: ignore[arg-type]
                    continue
                with self._lock:
                    w = snap["worker"]
                    self._latest[w] = snap
                    self._rss[w] = snap["rss_mb"]
                    held = self._held_since is not None and time.time() - self._held_since >= HELD_GRACE_S
                    for hist in (self._report, self._sec_report, *([self._held_report] if held else [])):
                        hist.merge(snap["report_hist"])
                    for hist in (
                        self._telemetry,
                        self._sec_telemetry,
                        *([self._held_telemetry] if held else []),
                    ):
                        hist.merge(snap["telemetry_hist"])
                    self._ends[w] = snap["session_ends"]
                    if snap["final"]:
                        self._finals[w] = snap
            if self._stop_sampler.is_set() and len(self._finals) == len(self._conns):
                return

    def _sample_loop(self) -> None:
        while not self._stop_sampler.wait(1.0 - (time.time() % 1.0) + 0.05):
            with self._lock:
                t = round(time.time() - self._t0, 1)
                snap = self._sum()
                if not self._stopping:
                    self._tracker.sample(t, snap["connected"])
                whole = snap["connected"] >= self.cfg.devices and not self._tracker.in_outage
                if not whole:
                    self._held_since = None
                elif self._held_since is None:
                    self._held_since = time.time()
                self._peak = max(self._peak, snap["connected"])
                if (
                    self._all_connected_s is None
                    and self.cfg.devices
                    and snap["connected"] >= self.cfg.devices
                ):
                    self._all_connected_s = t
                c = snap["counters"]
                self._timeline.append({
                    "t_s": t, "connected": snap["connected"], "reconnecting": snap["reconnecting"],
                    "pending": snap["pending"], "records_sent": c["records_sent"],
                    "records_acked": c["records_acked"], "reports_acked": c["reports_acked"],
                    "report_p99_ms": self._sec_report.percentile(99),
                    "telemetry_p99_ms": self._sec_telemetry.percentile(99),
                })  # fmt: skip
                self._sec_report, self._sec_telemetry = LatencyHist(), LatencyHist()

    def _sum(self) -> dict[str, Any]:
        out: dict[str, Any] = {"connected": 0, "waiting": 0, "offline": 0, "stopped": 0, "pending": 0,
                               "devices": 0, "counters": dict.fromkeys(COUNTERS, 0)}  # fmt: skip
        for snap in self._latest.values():
            for k in ("connected", "waiting", "offline", "stopped", "pending", "devices"):
                out[k] += snap[k]
            add_counts(out["counters"], snap["counters"])
        busy = out["connected"] + out["waiting"] + out["offline"] + out["stopped"]
        out["reconnecting"] = max(0, out["devices"] - busy)
        return out

    def stats(self, final: bool = False) -> SimStats:
        with self._lock:
            snap = self._sum()
            per_device: dict[str, dict[str, Any]] = {}
            ends: dict[str, int] = {}
            for e in self._ends.values():
                add_counts(ends, e)
            if final:
                for f in self._finals.values():
                    per_device.update(f["per_device"])
            return SimStats(
                devices=self.cfg.devices,
                connected=snap["connected"],
                reconnecting=snap["reconnecting"],
                peak_connected=self._peak,
                time_to_all_connected_s=self._all_connected_s,
                elapsed_s=round(time.time() - self._t0, 2) if self._t0 else 0.0,
                counters=snap["counters"],
                report_ack_ms=self._report.summary(),
                telemetry_ack_ms=self._telemetry.summary(),
                held_report_ack_ms=self._held_report.summary(),
                held_telemetry_ack_ms=self._held_telemetry.summary(),
                session_ends=ends,
                recoveries=[vars(r).copy() for r in self._tracker.recoveries],
                timeline=list(self._timeline),
                per_device=per_device,
                workers=self.cfg.workers,
                worker_rss_mb=[round(self._rss[w], 1) for w in sorted(self._rss)],
            )
