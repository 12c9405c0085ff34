"""Heartbeats/s one fleet-server process persists over Sync vs a bare grpc.aio server, same run.

Both servers speak mutual TLS on loopback; the load generator is two separate processes with one
channel and one Sync stream per simulated device, closed loop (report -> ack -> report). The
edgeloop server authenticates every stream against the registry and persists every heartbeat
(last_seen + observed state) before acking; the bare server only parses and acks.

Reported per run: acked heartbeats/s, heartbeats per server CPU-second (robust to noisy
neighbours), server RSS per open stream, and the ratios edgeloop/bare.

    python bench/sync_heartbeats.py --devices 1000,5000 [--db sqlite|postgres] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers.net import free_port

BIN = Path(sys.executable).parent
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def make_pki(work: Path, n: int) -> Path:
    from agent.identity import IdentityStore
    from fleet_server.pki import FleetCA

    pki = work / "server" / "pki"
    ca = FleetCA.create(pki)
    ca.ensure_server_certificate(["localhost", "127.0.0.1"])
    for i in range(n):
        d = pki / "devices" / f"d{i}"
        store = IdentityStore(d)
        key = store.load_or_create_key()
        issued = ca.sign_device_csr(store.make_csr(key, f"bench-{i:05d}"), f"bench-{i:05d}", days=2)
        d.mkdir(parents=True, exist_ok=True)
        (d / "key.pem").write_bytes(store.key_path.read_bytes())
        (d / "cert.pem").write_bytes(issued.pem)
        (d / "fp").write_text(issued.fingerprint)
    return pki


def register_devices(database_url: str, pki: Path, n: int) -> None:
    from sqlmodel import Session

    from fleet_server.db import make_engine
    from fleet_server.migrate import upgrade
    from fleet_server.models import Device, utcnow

    engine = make_engine(database_url)
    upgrade(engine)
    with Session(engine) as s:
        s.add_all(
            Device(
                id=f"bench-{i:05d}",
                profile="generic-x86",
                labels={},
                cert_fingerprint=(pki / "devices" / f"d{i}" / "fp").read_text(),
                enrolled_at=utcnow(),
            )
            for i in range(n)
        )
        s.commit()
    engine.dispose()


def start_edgeloop(work: Path, database_url: str) -> tuple[subprocess.Popen[bytes], int]:
    http, enroll, device = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGELOOP_")}
    env.update(
        EDGELOOP_DATA_DIR=str(work / "server"),
        EDGELOOP_DATABASE_URL=database_url,
        EDGELOOP_HTTP_PORT=str(http),
        EDGELOOP_ENROLL_PORT=str(enroll),
        EDGELOOP_DEVICE_PORT=str(device),
        EDGELOOP_DEVICE_MAX_MESSAGES_PER_S="100000",
        EDGELOOP_DEVICE_BURST="100000",
        EDGELOOP_LOG_LEVEL="WARNING",
    )
    log = open(work / "server.log", "ab")
    proc = subprocess.Popen(
        [BIN / "edgeloop-server", "--log-level", "WARNING", "run"], env=env, stdout=log, stderr=log
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{http}/healthz", timeout=1).status_code == 200:
                return proc, device
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit("edgeloop server did not start")


def start_bare(pki: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "sync" / "bare_server.py"), str(pki), str(port)],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"READY"
    return proc, port


def measure(server: subprocess.Popen[bytes], port: int, pki: Path, n: int, window_s: float) -> dict[str, Any]:
    time.sleep(1.0)
    rss0 = rss_bytes(server.pid)
    gens = []
    half = n // 2
    for first, count in ((0, half), (half, n - half)):
        gens.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(ROOT / "bench" / "sync" / "loadgen.py"),
                    str(pki),
                    f"localhost:{port}",
                    str(first),
                    str(count),
                    str(window_s),
                    "3",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                cwd=ROOT,
                env=dict(os.environ, PYTHONPATH=str(ROOT)),
            )
        )
    for g in gens:
        assert g.stdout is not None
        line = g.stdout.readline().strip()
        if line != b"READY":
            raise SystemExit(f"load generator failed: {line!r}")
    time.sleep(2.0)
    rss_open = rss_bytes(server.pid)
    for g in gens:
        assert g.stdin is not None
        g.stdin.write(b"GO\n")
        g.stdin.flush()
    time.sleep(3.0)  # warm-up, same as the generators'
    c0, t0 = cpu_s(server.pid), time.monotonic()
    time.sleep(window_s)
    c1, t1 = cpu_s(server.pid), time.monotonic()
    acked = 0
    for g in gens:
        out, _ = g.communicate(timeout=120)
        acked += json.loads(out.strip().splitlines()[-1])["acked"]
    cpu = c1 - c0
    return {
        "devices": n,
        "heartbeats_per_s": acked / (t1 - t0),
        "heartbeats_per_server_cpu_s": acked / cpu if cpu else 0.0,
        "server_cpu_cores": cpu / (t1 - t0),
        "rss_per_stream_bytes": (rss_open - rss0) / n,
        "server_rss_open_mb": rss_open / 2**20,
    }


def run(n: int, db: str, window_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-") as tmp:
        work = Path(tmp)
        print(f"[{n} devices] issuing {n} device certificates…", file=sys.stderr)
        pki = make_pki(work, n)
        bare, port = start_bare(pki)
        try:
            base = measure(bare, port, pki, n, window_s)
        finally:
            bare.terminate()
            bare.wait()
        print(f"[{n} devices] bare: {base}", file=sys.stderr)
        pg_name = ""
        if db == "postgres":
            from tests.conftest import make_pg_database

            pg_name, database_url = make_pg_database()
            database_url = database_url.replace("postgresql://", "postgresql+psycopg://")
        else:
            database_url = f"sqlite:///{work / 'server' / 'fleet.db'}"
        try:
            register_devices(database_url, pki, n)
            server, port = start_edgeloop(work, database_url)
            try:
                ours = measure(server, port, pki, n, window_s)
            finally:
                server.terminate()
                server.wait(30)
        finally:
            if pg_name:
                from tests.conftest import drop_pg_database

                drop_pg_database(pg_name)
        print(f"[{n} devices] edgeloop ({db}): {ours}", file=sys.stderr)
        return {
            "devices": n,
            "db": db,
            "bare": base,
            "edgeloop": ours,
            "ratio_rate": ours["heartbeats_per_s"] / base["heartbeats_per_s"],
            "ratio_per_cpu": ours["heartbeats_per_server_cpu_s"] / base["heartbeats_per_server_cpu_s"],
            "ratio_rss_per_stream": ours["rss_per_stream_bytes"] / max(base["rss_per_stream_bytes"], 1),
        }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", default="1000,5000")
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--json", type=Path)
    ns = parser.parse_args()
    results = [run(int(n), ns.db, ns.window) for n in ns.devices.split(",")]
    for r in results:
        e, b = r["edgeloop"], r["bare"]
        per_min = e["heartbeats_per_s"] * 60
        print(
            f"{r['devices']:>5} streams ({r['db']}): edgeloop {e['heartbeats_per_s']:,.0f}/s "
            f"({e['heartbeats_per_server_cpu_s']:,.0f}/CPU-s, "
            f"{e['rss_per_stream_bytes'] / 1024:.1f} KB/stream) | "
            f"bare {b['heartbeats_per_s']:,.0f}/s ({b['heartbeats_per_server_cpu_s']:,.0f}/CPU-s, "
            f"{b['rss_per_stream_bytes'] / 1024:.1f} KB/stream) | rate x{r['ratio_rate']:.2f}, "
            f"per-CPU x{r['ratio_per_cpu']:.2f}, RSS/stream x{r['ratio_rss_per_stream']:.2f} | "
            f"= {per_min:,.0f} devices at 1 heartbeat/min"
        )
    if ns.json:
        ns.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
