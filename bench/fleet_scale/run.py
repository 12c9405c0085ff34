"""gRPC scale bench: how many mutual-TLS Sync streams one fleet-server process holds at one
heartbeat per minute, and how fast the whole fleet is back after the server is SIGKILLed.

Per fleet size N (fresh SQLite database, N registered devices with real certificates):

1. start `edgeloop-server run` (log level WARNING, every default else);
2. start `--procs` load-generator processes (bench/fleet_scale/driver.py), staged ramp-up at
   `--ramp-per-s` devices/s in total with a per-connection timeout; a device counts as connected
   when the first report of its session is acked (authenticated, registered, committed);
3. steady state: after every device is connected and `--settle-s`, a `--window-s` window:
   heartbeat ack latency (p50/p99/max), server CPU (share of one core), server RSS per device;
4. reconnect storm: SIGKILL the server, start it again on the same ports and database; every
   device reconnects with the agent's backoff (exponential from 0.5 s, +/-20 % jitter) and sends
   a report at once; time from the kill until every device is connected again on a new session.

Everything (server, load generators, this script) runs on the same machine.

    .venv/bin/python -m bench.fleet_scale.run --devices 1000,5000,10000 --reps 1,1,3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.sync_heartbeats import cpu_s, make_pki, register_devices, rss_bytes
from tests.helpers.net import free_port

BIN = Path(sys.executable).parent


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pki_for(work: Path, n: int) -> Path:
    """Certificates for `n` devices, cached across runs (issuing 10,000 takes a while)."""
    for cached in sorted(work.glob("pki-*"), key=lambda p: int(p.name.split("-")[1])):
        if int(cached.name.split("-")[1]) >= n and (cached / "done").exists():
            return cached / "server" / "pki"
    root = work / f"pki-{n}"
    log(f"issuing {n} device certificates into {root}")
    make_pki(root, n)
    (root / "done").write_text("")
    return root / "server" / "pki"


class Server:
    def __init__(self, data: Path, pki: Path, database_url: str) -> None:
        self.data = data
        self.pki = pki
        self.database_url = database_url
        self.http, self.enroll, self.device = free_port(), free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start the server; returns when /healthz answers (seconds it took)."""
        t0 = time.monotonic()
        self.launch()
        return self.wait_healthy(t0)

    def launch(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGELOOP_")}
        env.update(
            EDGELOOP_DATA_DIR=str(self.data),
            EDGELOOP_DATABASE_URL=self.database_url,
            EDGELOOP_HTTP_PORT=str(self.http),
            EDGELOOP_ENROLL_PORT=str(self.enroll),
            EDGELOOP_DEVICE_PORT=str(self.device),
            EDGELOOP_LOG_LEVEL="WARNING",
        )
        logf = open(self.data / "server.log", "ab")  # the child holds it
        self.proc = subprocess.Popen(
            [BIN / "edgeloop-server", "--log-level", "WARNING", "run"], env=env, stdout=logf, stderr=logf
        )

    def wait_healthy(self, t0: float) -> float:
        assert self.proc is not None
        deadline = t0 + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode}; see {self.data / 'server.log'}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.http}/healthz", timeout=2).status_code == 200:
                    return time.monotonic() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise SystemExit("server did not become healthy")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Drivers:
    """The load-generator processes and the latest status line of each."""

    def __init__(
        self, pki: Path, target: str, n: int, procs: int, args: argparse.Namespace, mark: Path
    ) -> None:
        self.lock = threading.Lock()
        self.latest: list[dict[str, Any]] = [{} for _ in range(procs)]
        self.lat: list[tuple[float, float]] = []  # (wall time, ms)
        self.procs: list[subprocess.Popen[str]] = []
        per = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
        first = 0
        for i, count in enumerate(per):
            cmd = [
                sys.executable, "-m", "bench.fleet_scale.driver", "--pki", str(pki), "--target", target,
                "--first", str(first), "--count", str(count),
                "--ramp-per-s", str(args.ramp_per_s / procs),
                "--connect-timeout-s", str(args.connect_timeout_s),
                "--heartbeat-s", str(args.heartbeat_s), "--mark-file", str(mark),
                "--max-connecting", str(args.max_connecting),
            ]  # fmt: skip
            first += count
            p = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                env=dict(os.environ, PYTHONPATH=str(ROOT)),
            )  # fmt: skip
            self.procs.append(p)
            threading.Thread(target=self._pump, args=(i, p), daemon=True).start()

    def _pump(self, i: int, p: subprocess.Popen[str]) -> None:
        assert p.stdout is not None
        for line in p.stdout:
            try:
                status = json.loads(line)
            except json.JSONDecodeError:
                continue
            with self.lock:
                self.latest[i] = status
                self.lat.extend((status["t"], ms) for ms in status["lat_ms"])

    def total(self, key: str) -> int:
        with self.lock:
            return sum(int(s.get(key, 0)) for s in self.latest)

    def latencies(self, t0: float, t1: float) -> list[float]:
        with self.lock:
            return [ms for t, ms in self.lat if t0 <= t <= t1]

    def all_back_at(self) -> float:
        """Wall time when the last device was back (0 unless every driver's devices are)."""
        with self.lock:
            ats = [float(s.get("all_back_at", 0.0)) for s in self.latest]
        return max(ats) if all(ats) else 0.0

    def why(self) -> dict[str, int]:
        out: dict[str, int] = {}
        with self.lock:
            for s in self.latest:
                for k, v in s.get("why", {}).items():
                    out[k] = out.get(k, 0) + v
        return out

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        for p in self.procs:
            if p.stdin is not None:
                p.stdin.close()
        for p in self.procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def wait_for(pred: Any, timeout_s: float, what: str) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if pred():
            return time.monotonic() - t0
        time.sleep(0.2)
    log(f"timed out waiting for {what}")
    return None


def run_one(n: int, rep: int, args: argparse.Namespace) -> dict[str, Any]:
    work: Path = args.work
    pki = pki_for(work, args.max_devices)
    data = work / f"run-{n}-{rep}"
    subprocess.run(["rm", "-rf", str(data)], check=True)
    data.mkdir(parents=True)
    (data / "pki").symlink_to(pki)  # the server's CA, server certificate and the devices' keys
    database_url = f"sqlite:///{data / 'fleet.db'}"
    register_devices(database_url, pki, n)
    server = Server(data, pki, database_url)
    result: dict[str, Any] = {
        "devices": n, "rep": rep, "procs": args.procs, "ramp_per_s": args.ramp_per_s,
        "max_connecting": args.max_connecting, "connect_timeout_s": args.connect_timeout_s,
    }  # fmt: skip
    result["server_start_s"] = round(server.start(), 2)
    time.sleep(2)
    rss0 = rss_bytes(server.pid)
    mark = data / "killed_at"
    drivers = Drivers(pki, f"localhost:{server.device}", n, args.procs, args, mark)
    try:
        log(f"[{n} #{rep}] ramping up {n} devices at {args.ramp_per_s}/s")
        ramp_c0 = cpu_s(server.pid)
        result["load_avg_start"] = os.getloadavg()[0]
        took = wait_for(
            lambda: drivers.total("connected") >= n, n / args.ramp_per_s + args.ramp_slack_s, "ramp"
        )
        result["ramp_s"] = round(took, 1) if took is not None else None
        result["connected_after_ramp"] = drivers.total("connected")
        result["server_cpu_ms_per_connect_ramp"] = round(
            (cpu_s(server.pid) - ramp_c0) * 1000 / max(drivers.total("connects"), 1), 2
        )
        result["connect_failures_ramp"] = drivers.total("failures")
        result["connect_failures_ramp_why"] = drivers.why()
        log(
            f"[{n} #{rep}] connected {result['connected_after_ramp']} in {took} s; settling {args.settle_s} s"
        )
        time.sleep(args.settle_s)
        c0, t0, w0 = cpu_s(server.pid), time.monotonic(), time.time()
        gen_c0 = sum(cpu_s(p) for p in drivers.pids())
        acked0 = drivers.total("acked")
        time.sleep(args.window_s)
        c1, t1, w1 = cpu_s(server.pid), time.monotonic(), time.time()
        gen_c1 = sum(cpu_s(p) for p in drivers.pids())
        time.sleep(1.5)  # last status lines of the window
        lat = drivers.latencies(w0, w1)
        rss = rss_bytes(server.pid)
        result.update(
            connected_steady=drivers.total("connected"),
            heartbeats_acked_window=drivers.total("acked") - acked0,
            ack_ms_p50=pct(lat, 0.50),
            ack_ms_p99=pct(lat, 0.99),
            ack_ms_max=max(lat) if lat else None,
            ack_timeouts=drivers.total("ack_timeouts"),
            server_cpu_core_share=round((c1 - c0) / (t1 - t0), 3),
            loadgen_cpu_core_share=round((gen_c1 - gen_c0) / (t1 - t0), 3),
            server_rss_mb=round(rss / 2**20, 1),
            server_rss_idle_mb=round(rss0 / 2**20, 1),
            rss_per_device_kb=round((rss - rss0) / n / 1024, 1),
            window_s=args.window_s,
        )
        log(f"[{n} #{rep}] steady: {json.dumps({k: result[k] for k in list(result)[-12:]})}")
        if args.storm:
            failures0 = drivers.total("failures")
            killed = time.time()
            mark.write_text(repr(killed))
            t_kill = time.monotonic()
            server.kill()
            log(f"[{n} #{rep}] server SIGKILLed; restarting")
            server.launch()
            healthy: list[float] = []
            threading.Thread(target=lambda: healthy.append(server.wait_healthy(t_kill)), daemon=True).start()

            def progress() -> bool:
                back = drivers.total("back")
                if int(time.monotonic() - t_kill) % 10 == 0:
                    log(f"[{n} #{rep}]   +{time.monotonic() - t_kill:.0f} s: back {back}, "
                        f"connected {drivers.total('connected')}, failures {drivers.why()}")  # fmt: skip
                return back >= n

            took = wait_for(progress, args.storm_timeout_s, "storm")
            try:
                result["storm_server_cpu_s"] = round(cpu_s(server.pid), 1)  # the new process: all of it
            except OSError:
                pass
            back_at = drivers.all_back_at()
            result["storm_all_back_s"] = round(back_at - killed, 1) if took is not None and back_at else None
            result["storm_back"] = drivers.total("back")
            wait_for(lambda: bool(healthy), 120, "restarted server's /healthz")
            result["restart_healthy_s"] = round(healthy[0], 2) if healthy else None
            result["storm_connect_failures"] = drivers.total("failures") - failures0
            result["connect_failures_total_why"] = drivers.why()
            w2 = time.time()
            time.sleep(args.settle_s)
            lat2 = drivers.latencies(w2, time.time())
            result["after_storm_ack_ms_p99"] = pct(lat2, 0.99)
            result["load_avg_end"] = os.getloadavg()[0]
            result["server_rss_after_storm_mb"] = round(rss_bytes(server.pid) / 2**20, 1)
            log(f"[{n} #{rep}] storm: all back {result['storm_all_back_s']} s after the kill "
                f"(server /healthz {result['restart_healthy_s']} s after it)")  # fmt: skip
    finally:
        drivers.stop()
        server.stop()
    return result


def run_bare(n: int, args: argparse.Namespace) -> dict[str, Any]:
    """The same ramp and window against bench/sync/bare_server.py (mutual TLS, parse, ack; no
    auth lookup, no session logic, no persistence): what gRPC + TLS alone cost per device."""
    pki = pki_for(args.work, args.max_devices)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "sync" / "bare_server.py"), str(pki), str(port)],
        stdout=subprocess.PIPE, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"READY"
    time.sleep(1)
    rss0, c0 = rss_bytes(proc.pid), cpu_s(proc.pid)
    mark = args.work / "bare-mark"
    mark.unlink(missing_ok=True)
    drivers = Drivers(pki, f"localhost:{port}", n, args.procs, args, mark)
    out: dict[str, Any] = {"devices": n, "server": "bare grpc.aio (bench/sync/bare_server.py)"}
    try:
        limit = n / args.ramp_per_s + args.ramp_slack_s
        took = wait_for(lambda: drivers.total("connected") >= n, limit, "ramp")
        out["ramp_s"] = round(took, 1) if took is not None else None
        out["server_cpu_ms_per_connect_ramp"] = round(
            (cpu_s(proc.pid) - c0) * 1000 / max(drivers.total("connects"), 1), 2
        )
        time.sleep(args.settle_s)
        c1, t1, w1 = cpu_s(proc.pid), time.monotonic(), time.time()
        time.sleep(args.window_s)
        c2, t2, w2 = cpu_s(proc.pid), time.monotonic(), time.time()
        time.sleep(1.5)
        lat = drivers.latencies(w1, w2)
        out.update(
            connected=drivers.total("connected"),
            ack_ms_p50=pct(lat, 0.5),
            ack_ms_p99=pct(lat, 0.99),
            server_cpu_core_share=round((c2 - c1) / (t2 - t1), 3),
            rss_per_device_kb=round((rss_bytes(proc.pid) - rss0) / n / 1024, 1),
            load_avg=os.getloadavg()[0],
        )
        log(f"[bare {n}] {json.dumps(out)}")
    finally:
        drivers.stop()
        proc.kill()
        proc.wait()
    return out


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for n in sorted({r["devices"] for r in rows}):
        rs = [r for r in rows if r["devices"] == n]
        s: dict[str, Any] = {"devices": n, "reps": len(rs)}
        for key in (
            "connected_steady", "rss_per_device_kb", "server_rss_mb", "server_cpu_core_share",
            "ack_ms_p99", "ack_ms_p50", "storm_all_back_s", "ramp_s", "loadgen_cpu_core_share",
        ):  # fmt: skip
            vals = [r[key] for r in rs if r.get(key) is not None]
            if vals:
                s[key] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
        out.append(s)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", default="1000,5000,10000")
    p.add_argument("--reps", default="1", help="repetitions per size: one number or one per size")
    p.add_argument("--procs", type=int, default=2, help="load-generator processes")
    p.add_argument("--ramp-per-s", type=float, default=200.0)
    p.add_argument("--ramp-slack-s", type=float, default=120.0)
    p.add_argument("--connect-timeout-s", type=float, default=20.0)
    p.add_argument("--heartbeat-s", type=float, default=60.0)
    p.add_argument("--max-connecting", type=int, default=100, help="session opens at once per driver")
    p.add_argument("--settle-s", type=float, default=10.0)
    p.add_argument("--window-s", type=float, default=60.0)
    p.add_argument("--storm-timeout-s", type=float, default=180.0)
    p.add_argument("--no-storm", dest="storm", action="store_false")
    p.add_argument("--work", type=Path, default=Path("/tmp/edgeloop-fleet-scale"))
    p.add_argument("--json", type=Path)
    p.add_argument("--bare", type=int, default=0, help="also ramp this many devices against a bare server")
    args = p.parse_args()
    sizes = [int(x) for x in args.devices.split(",")]
    reps = [int(x) for x in args.reps.split(",")]
    reps = reps * len(sizes) if len(reps) == 1 else reps
    args.max_devices = max(sizes)
    args.work.mkdir(parents=True, exist_ok=True)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it
    rows: list[dict[str, Any]] = []
    bare = run_bare(args.bare, args) if args.bare else None
    for n, k in zip(sizes, reps, strict=True):
        for rep in range(1, k + 1):
            rows.append(run_one(n, rep, args))
            if args.json:
                args.json.write_text(
                    json.dumps({"runs": rows, "summary": summarize(rows), "bare": bare}, indent=2)
                )
    print(json.dumps(summarize(rows), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
