"""MQTT at fleet scale: N simulated devices, each its own mutual-TLS MQTT connection (MqttLink),
against one `edgeloop-server run` process and its MQTT bridge, at one heartbeat per minute.

Setup (all on loopback, in a temporary directory): `edgeloop-server init`, N devices registered
active in the database, `edgeloop-server mqtt-config` for a private Mosquitto (mutual TLS,
certificate = username, the per-device ACL, persistence) with `max_connections -1` added to its
listener, one device certificate per device id issued by the fleet CA (one shared EC key: key
generation is not what is measured), the server with `EDGELOOP_MQTT_URL=mqtts://...`.

Devices live in `--workers` processes (one asyncio loop each, `worker` mode of this file). Each
device: open its link (jittered exponential backoff 1 s .. 30 s on failure, `--connect-timeout-s`
per attempt), then send a `DeviceReport` on `up` every `--heartbeat-s` (random phase) and time the
server's `ReportAck` on `down` (send -> ack: the server's ack latency, broker hops included).

Stages: ramp to each size in `--devices` (at `--ramp-per-s`), hold `--hold-s` and measure (server
RSS and CPU, p50/p99 ack latency over the hold); then at the largest size a server restart
(SIGKILL + start: devices stay on the broker, the bridge catches up) and a broker restart (SIGTERM
+ start: every device reconnects with jittered backoff). Prints and writes JSON (`--json`).

    .venv/bin/python -m bench.fleet_sim.mqtt_scale --devices 1000,5000,10000 \\
        --json bench/fleet_sim/mqtt_scale.json

Does not use bench/fleet_sim's FleetSim (not there when this was written); only its MqttLink.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.fleet_sim.link import LinkError, LinkRejected, SimIdentity
from bench.fleet_sim.mqtt_link import MqttLink
from protos.edgeloop.v1 import device_pb2 as pb

BIN = Path(sys.executable).parent
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
PREFIX = "mq"
STALE_S = 5.0  # a report unacked for longer is late (the acks come in well under a second)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def runq_wait_s(pid: int) -> float:
    """Seconds the process's threads spent runnable but waiting for a CPU (/proc schedstat):
    how much of a latency is the machine's other work, not this process."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            pass
    return total / 1e9


def raise_nofile() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def device_id(i: int) -> str:
    return f"{PREFIX}-{i:05d}"


# ------------------------------------------------------------------ worker process


@dataclass
class WorkerStats:
    connected: int = 0
    connects: int = 0
    connect_failures: int = 0
    rejected: int = 0
    sent: int = 0
    acked: int = 0
    send_errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def drain(self) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items() if k != "latencies_ms"}
        out["latencies_ms"], self.latencies_ms = self.latencies_ms, []
        return out


class SimDevice:
    def __init__(self, ident: SimIdentity, ns: argparse.Namespace, stats: WorkerStats, rng: random.Random):
        self.ident, self.ns, self.stats, self.rng = ident, ns, stats, rng
        self.seq = 0
        self.sent: dict[int, float] = {}  # seq -> monotonic send time, until acked
        self.link: MqttLink | None = None

    async def run(self) -> None:
        backoff = self.ns.backoff_initial_s
        while True:
            link = MqttLink(
                self.ident,
                "127.0.0.1",
                self.ns.port,
                tls=True,
                keepalive_s=self.ns.keepalive_s,
                server_hostname="localhost",
                ack_timeout_s=30.0,
            )
            try:
                await link.open(self.ns.connect_timeout_s)
            except LinkRejected:
                self.stats.rejected += 1
                backoff = self.ns.backoff_max_s
            except LinkError:
                self.stats.connect_failures += 1
            else:
                self.link = link
                self.stats.connects += 1
                self.stats.connected += 1
                backoff = self.ns.backoff_initial_s
                try:
                    await self._session(link)
                finally:
                    self.stats.connected -= 1
                    self.link = None
            await asyncio.sleep(self.rng.uniform(0, backoff))  # full jitter
            backoff = min(backoff * 2, self.ns.backoff_max_s)

    async def _session(self, link: MqttLink) -> None:
        sender = asyncio.create_task(self._send_loop(link))
        try:
            while True:
                msg = await link.recv()
                if isinstance(msg, pb.SyncResponse) and msg.WhichOneof("msg") == "report_ack":
                    t = self.sent.pop(msg.report_ack.sequence, None)
                    if t is not None:
                        self.stats.acked += 1
                        self.stats.latencies_ms.append((time.monotonic() - t) * 1000)
        except LinkError:
            pass
        finally:
            sender.cancel()

    async def _send_loop(self, link: MqttLink) -> None:
        hb = self.ns.heartbeat_s
        await asyncio.sleep(self.rng.uniform(0, hb))
        while True:
            self.seq += 1
            report = pb.DeviceReport(
                device_id=self.ident.device_id,
                sequence=self.seq,
                timestamp_ms=int(time.time() * 1000),
                agent_version="sim",
                profile="generic-x86",
                health=pb.HEALTH_OK,
            )
            self.sent[self.seq] = time.monotonic()
            try:
                await link.send(pb.SyncRequest(report=report))
                self.stats.sent += 1
            except LinkError:
                self.sent.pop(self.seq, None)
                self.stats.send_errors += 1
                link.abort()  # no PUBACK in time: drop the connection and reconnect, as an agent does
                return
            await asyncio.sleep(hb)


async def worker_main(ns: argparse.Namespace) -> None:
    raise_nofile()
    idents = [
        SimIdentity(**{k: v.encode() if k != "device_id" else v for k, v in d.items()})
        for d in json.loads(Path(ns.identities).read_text())
    ]
    stats = WorkerStats()
    rng = random.Random(ns.seed)
    devices: list[SimDevice] = []
    tasks: list[asyncio.Task[None]] = []
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def ramp(target: int) -> None:
        gap = ns.workers / ns.ramp_per_s
        while len(devices) < min(target, len(idents)):
            d = SimDevice(idents[len(devices)], ns, stats, rng)
            devices.append(d)
            tasks.append(asyncio.create_task(d.run()))
            await asyncio.sleep(gap)

    async def report() -> None:
        while True:
            await asyncio.sleep(1.0)
            out = stats.drain()
            out["started"] = len(devices)
            out["outstanding"] = sum(len(d.sent) for d in devices)
            old = time.monotonic() - STALE_S
            out["stale"] = sum(1 for d in devices for t in d.sent.values() if t < old)
            out["cpu_s"] = time.process_time()
            print(json.dumps(out), flush=True)

    reporter = asyncio.create_task(report())
    ramping: asyncio.Task[None] | None = None
    while line := (await reader.readline()).decode().strip():
        cmd, _, arg = line.partition(" ")
        if cmd == "target":
            if ramping is not None:
                ramping.cancel()
            ramping = asyncio.create_task(ramp(int(arg)))
        elif cmd == "stop":
            break
    reporter.cancel()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*(d.link.close() for d in devices if d.link is not None), return_exceptions=True)


# ------------------------------------------------------------------ orchestration


class Workers:
    """The worker processes and the live sum of what they report."""

    def __init__(self, ns: argparse.Namespace, work: Path, idents: list[dict[str, str]], port: int) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.last: list[dict[str, Any]] = []
        self.latencies: list[tuple[float, float]] = []  # (arrival wall time, ms)
        self.w = ns.workers
        for k in range(self.w):
            path = work / f"ids-{k}.json"
            path.write_text(json.dumps(idents[k :: self.w]))
            args = [
                sys.executable,
                "-m",
                "bench.fleet_sim.mqtt_scale",
                "worker",
                f"--identities={path}",
                f"--port={port}",
                f"--workers={self.w}",
                f"--ramp-per-s={ns.ramp_per_s}",
                f"--heartbeat-s={ns.heartbeat_s}",
                f"--keepalive-s={ns.keepalive_s}",
                f"--connect-timeout-s={ns.connect_timeout_s}",
                f"--backoff-initial-s={ns.backoff_initial_s}",
                f"--backoff-max-s={ns.backoff_max_s}",
                f"--seed={k}",
            ]
            self.procs.append(subprocess.Popen(args, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE))
            self.last.append({})
        for k, p in enumerate(self.procs):
            threading.Thread(target=self._read, args=(k, p), daemon=True).start()

    def _read(self, k: int, p: subprocess.Popen[bytes]) -> None:
        assert p.stdout is not None
        for line in p.stdout:
            d = json.loads(line)
            now = time.time()
            self.latencies.extend((now, ms) for ms in d.pop("latencies_ms"))
            self.last[k] = d

    def target(self, n: int) -> None:
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write(f"target {-(-n // self.w)}\n".encode())
            p.stdin.flush()

    def total(self, key: str) -> float:
        return sum(d.get(key, 0) for d in self.last)

    def lat_since(self, t: float) -> list[float]:
        return [ms for at, ms in list(self.latencies) if at >= t]

    def stop(self) -> None:
        for p in self.procs:
            with_stdin = p.stdin
            if with_stdin is not None and p.poll() is None:
                try:
                    with_stdin.write(b"stop\n")
                    with_stdin.flush()
                except BrokenPipeError:
                    pass
        for p in self.procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()


class Server:
    def __init__(self, env: dict[str, str], work: Path, http: int) -> None:
        self.env, self.work, self.http = env, work, http
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        import httpx

        out = open(self.work / "server.log", "ab")
        t0 = time.time()
        self.proc = subprocess.Popen(
            [BIN / "edgeloop-server", "--log-level", "WARNING", "run"], env=self.env, stdout=out, stderr=out
        )
        while time.time() - t0 < 120:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited: {(self.work / 'server.log').read_text()[-3000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.http}/healthz", timeout=2).status_code == 200:
                    return time.time() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit("server did not start")

    def health(self) -> dict[str, Any]:
        import httpx

        try:
            return dict(httpx.get(f"http://127.0.0.1:{self.http}/healthz", timeout=10).json())
        except (httpx.HTTPError, ValueError):
            return {}

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Mosquitto:
    def __init__(self, conf: Path, work: Path, port: int) -> None:
        self.conf, self.work, self.port = conf, work, port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = open(self.work / "mosquitto.log", "ab")
        self.proc = subprocess.Popen(
            ["/usr/sbin/mosquitto", "-c", str(self.conf)], stdout=out, stderr=out
        )  # the soft fd limit is inherited: raise it in the shell if it is low
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))], 1)


def setup(ns: argparse.Namespace, work: Path, n_max: int) -> tuple[Server, Mosquitto, list[dict[str, str]]]:
    import pwd

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    from sqlmodel import Session

    from fleet_server.db import make_engine
    from fleet_server.migrate import upgrade
    from fleet_server.models import Device, utcnow
    from fleet_server.pki import FleetCA

    http, port = free_port(), free_port()
    db_url = ns.database_url or f"sqlite:///{work / 'server' / 'fleet.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGELOOP_")}
    env.update(
        EDGELOOP_DATA_DIR=str(work / "server"),
        EDGELOOP_DATABASE_URL=db_url,
        EDGELOOP_HTTP_PORT=str(http),
        EDGELOOP_ENROLL_PORT=str(free_port()),
        EDGELOOP_DEVICE_PORT=str(free_port()),
        EDGELOOP_LOG_LEVEL="WARNING",
    )
    (work / "server").mkdir()
    subprocess.run([BIN / "edgeloop-server", "init", "--json"], env=env, check=True, capture_output=True)
    out = subprocess.run(
        [
            BIN / "edgeloop-server",
            "mqtt-config",
            "--out",
            str(work / "broker"),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--run-as",
            pwd.getpwuid(os.geteuid()).pw_name,
            "--json",
        ],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    files = json.loads(out.stdout)
    conf = Path(files["config"])
    conf.write_text(
        conf.read_text().replace(
            f"listener {port} 127.0.0.1\n", f"listener {port} 127.0.0.1\nmax_connections -1\n"
        )
    )
    env.update(
        EDGELOOP_MQTT_URL=f"mqtts://127.0.0.1:{port}",
        EDGELOOP_MQTT_CA_FILE=files["ca"],
        EDGELOOP_MQTT_CLIENT_CERT=files["server_cert"],
        EDGELOOP_MQTT_CLIENT_KEY=files["server_key"],
        EDGELOOP_MQTT_CLIENT_ID="edgeloop-scale-server",
    )
    env.update(dict(kv.split("=", 1) for kv in ns.server_env))
    engine = make_engine(db_url)
    upgrade(engine)
    with Session(engine) as s:
        s.add_all(
            Device(id=device_id(i), profile="generic-x86", labels={}, enrolled_at=utcnow())
            for i in range(n_max)
        )
        s.commit()
    engine.dispose()
    ca = FleetCA.load(work / "server" / "pki")
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sim")]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    ca_pem = ca.cert_pem.decode()
    idents = []
    for i in range(n_max):
        cert = ca.sign_device_csr(csr, device_id(i), days=30).pem.decode()
        idents.append({"device_id": device_id(i), "key_pem": key_pem, "cert_pem": cert, "ca_pem": ca_pem})
    broker = Mosquitto(conf, work, port)
    return Server(env, work, http), broker, idents


def wait(pred: Any, timeout: float, every: float = 1.0) -> float | None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return round(time.time() - t0, 1)
        time.sleep(every)
    return None


def run(ns: argparse.Namespace) -> dict[str, Any]:
    sizes = [int(x) for x in ns.devices.split(",")]
    result: dict[str, Any] = {"config": {k: v for k, v in vars(ns).items() if k != "cmd"}, "stages": []}
    with tempfile.TemporaryDirectory(prefix="edgeloop-mqtt-scale-") as tmp:
        work = Path(tmp)
        log(f"setup: {max(sizes)} devices, certificates, broker config in {work}")
        server, broker, idents = setup(ns, work, max(sizes))
        broker.start()
        server.start()
        workers = Workers(ns, work, idents, broker.port)
        try:
            for n in sizes:
                result["stages"].append(hold(ns, server, broker, workers, n))
            n = sizes[-1]
            result["server_restart"] = server_restart(ns, server, workers, n)
            result["broker_restart"] = broker_restart(ns, server, broker, workers, n)
        finally:
            workers.stop()
            server.stop()
            broker.stop()
            if ns.keep_logs:
                for name in ("server.log", "mosquitto.log"):
                    (Path(ns.keep_logs) / name).write_bytes((work / name).read_bytes())
    return result


def hold(
    ns: argparse.Namespace, server: Server, broker: Mosquitto, workers: Workers, n: int
) -> dict[str, Any]:
    assert server.proc is not None
    assert broker.proc is not None
    t0 = time.time()
    workers.target(n)
    took = wait(lambda: workers.total("connected") >= n, ns.connect_deadline_s)
    log(f"{n}: all connected after {took} s (connected {workers.total('connected'):.0f})")
    online = wait(lambda: server.health().get("devices_online", 0) >= n, 120, every=2)
    log(f"{n}: server sees them online after +{online} s")
    time.sleep(ns.settle_s)  # let one heartbeat period pass, so every device is in its rhythm
    pid, bpid = server.proc.pid, broker.proc.pid
    wpids = [p.pid for p in workers.procs]
    cpu0, bcpu0, t1 = cpu_s(pid), cpu_s(bpid), time.time()
    rq0, wrq0, load0 = runq_wait_s(pid), sum(runq_wait_s(w) for w in wpids), os.getloadavg()[0]
    time.sleep(ns.hold_s)
    cpu1, bcpu1, t2 = cpu_s(pid), cpu_s(bpid), time.time()
    rq1, wrq1, load1 = runq_wait_s(pid), sum(runq_wait_s(w) for w in wpids), os.getloadavg()[0]
    lats = workers.lat_since(t1)
    health = server.health()
    stage = {
        "devices": n,
        "connected": workers.total("connected"),
        "server_online": health.get("devices_online"),
        "time_to_all_connected_s": took,
        "ramp_s": round(t1 - t0 - ns.settle_s, 1),
        "server_rss_mb": round(rss_bytes(pid) / 2**20, 1),
        "server_cpu_pct": round(100 * (cpu1 - cpu0) / (t2 - t1), 1),
        "server_runq_wait_per_s": round((rq1 - rq0) / (t2 - t1), 2),
        "workers_runq_wait_per_s": round((wrq1 - wrq0) / (t2 - t1), 2),
        "load_avg": round((load0 + load1) / 2, 1),
        "broker_rss_mb": round(rss_bytes(bpid) / 2**20, 1),
        "broker_cpu_pct": round(100 * (bcpu1 - bcpu0) / (t2 - t1), 1),
        "acks": len(lats),
        "server_cpu_ms_per_ack": round(1000 * (cpu1 - cpu0) / len(lats), 2) if lats else None,
        "ack_ms_p50": pct(lats, 0.5),
        "ack_ms_p99": pct(lats, 0.99),
        "ack_ms_max": pct(lats, 1.0),
        "outstanding": workers.total("outstanding"),
        "connect_failures": workers.total("connect_failures"),
        "send_errors": workers.total("send_errors"),
        "mqtt_stats": {k: v for k, v in health.get("mqtt", {}).items() if k != "malformed_by_device"},
    }
    log(f"{n}: {json.dumps(stage)}")
    return stage


def server_restart(ns: argparse.Namespace, server: Server, workers: Workers, n: int) -> dict[str, Any]:
    """SIGKILL the server, wait `--outage-s`, start it; devices stay on the broker. Back = every report
    sent before or during the outage acked (nothing outstanding) and the server sees all N online."""
    log("server restart: SIGKILL")
    t_kill = time.time()
    server.kill()
    time.sleep(ns.outage_s)
    t_start = time.time()
    startup = server.start()
    backlog = wait(lambda: workers.total("stale") == 0, ns.recover_timeout_s, every=0.5)
    online = wait(lambda: server.health().get("devices_online", 0) >= n, ns.recover_timeout_s, every=1)
    time.sleep(30)
    lats = workers.lat_since(t_start + startup + (backlog or 0) + 5)
    out = {
        "outage_s": round(t_start - t_kill, 1),
        "server_startup_s": round(startup, 1),
        "all_back_after_kill_s": round(t_start - t_kill + startup + (backlog or 0), 1),
        "backlog_acked_after_start_s": backlog,
        "all_online_after_healthy_s": online,
        "connected": workers.total("connected"),
        "late_reports": workers.total("stale"),
        "send_errors_total": workers.total("send_errors"),
        "ack_ms_p99_after": pct(lats, 0.99),
        "server_rss_mb": round(rss_bytes(server.proc.pid) / 2**20, 1) if server.proc else None,
    }
    log(f"server restart: {json.dumps(out)}")
    return out


def broker_restart(
    ns: argparse.Namespace, server: Server, broker: Mosquitto, workers: Workers, n: int
) -> dict[str, Any]:
    """SIGTERM the broker (it saves its sessions), start it again; all devices reconnect (jitter)."""
    log("broker restart")
    t0 = time.time()
    assert broker.proc is not None
    bcpu_before = cpu_s(broker.proc.pid)
    broker.stop()
    dropped = wait(lambda: workers.total("connected") <= 0.01 * n, 60, every=0.2)
    broker.start()
    t_up = time.time()
    assert broker.proc is not None
    back = wait(lambda: workers.total("connected") >= n, ns.recover_timeout_s, every=0.5)
    storm_cpu = cpu_s(broker.proc.pid)
    reconnected = workers.total("connected")
    online = wait(lambda: server.health().get("devices_online", 0) >= n, ns.recover_timeout_s, every=1)
    backlog = wait(lambda: workers.total("stale") == 0, ns.recover_timeout_s, every=0.5)
    time.sleep(30)
    lats = workers.lat_since(time.time() - 30)
    out = {
        "broker_cpu_s_before_stop": round(bcpu_before, 1),
        "broker_cpu_s_in_storm": round(storm_cpu, 1),
        "reconnected_at_end_of_wait": reconnected,
        "broker_down_s": round(t_up - t0, 1),
        "devices_dropped_s": dropped,
        "all_reconnected_after_broker_up_s": back,
        "server_online_after_s": online,
        "backlog_acked_after_s": backlog,
        "connected": workers.total("connected"),
        "late_reports": workers.total("stale"),
        "connect_failures_total": workers.total("connect_failures"),
        "ack_ms_p99_after": pct(lats, 0.99),
    }
    log(f"broker restart: {json.dumps(out)}")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cmd", nargs="?", default="run", choices=["run", "worker"])
    p.add_argument("--devices", default="1000,5000,10000")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--ramp-per-s", type=float, default=200.0)
    p.add_argument("--heartbeat-s", type=float, default=60.0)
    p.add_argument("--keepalive-s", type=float, default=60.0)
    p.add_argument("--connect-timeout-s", type=float, default=30.0)
    p.add_argument("--backoff-initial-s", type=float, default=1.0, help="full jitter: first ceiling")
    p.add_argument("--backoff-max-s", type=float, default=60.0)
    p.add_argument("--connect-deadline-s", type=float, default=600.0)
    p.add_argument("--settle-s", type=float, default=60.0)
    p.add_argument("--hold-s", type=float, default=120.0)
    p.add_argument("--outage-s", type=float, default=10.0)
    p.add_argument("--recover-timeout-s", type=float, default=300.0)
    p.add_argument("--database-url", default="", help="default: SQLite in the work dir")
    p.add_argument("--server-env", action="append", default=[], help="EDGELOOP_X=V for the server")
    p.add_argument("--keep-logs", default="", help="copy server.log and mosquitto.log here")
    p.add_argument("--json", default="")
    # worker mode
    p.add_argument("--identities", default="")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    ns = p.parse_args(argv)
    if ns.cmd == "worker":
        asyncio.run(worker_main(ns))
        return
    result = run(ns)
    text = json.dumps(result, indent=2)
    print(text)
    if ns.json:
        Path(ns.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
