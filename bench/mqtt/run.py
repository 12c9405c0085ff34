"""Telemetry/s the fleet server's MQTT bridge persists vs a bare paho subscriber, same run.

Two private Mosquitto brokers (`/usr/sbin/mosquitto` on free loopback ports, persistence off, the
queue limits `edgeloop-server mqtt-config` writes: max_queued_messages 2,400,000, 1 GiB per client,
200 in flight), never the machine's broker:
- broker A: the **baseline**, `bare_subscriber.py` (shared subscription, QoS 1, counts only);
- broker B: the **candidate**, a real `edgeloop-server run` process with `EDGELOOP_MQTT_URL`
  pointing at it; its bridge persists every record through the group-commit IngestWriter into
  `telemetry_record` (SQLite file or a fresh PostgreSQL database).

The load generator (`loadgen.py`, 2 processes x 2 connections, devices multiplexed over them, see
its docstring) publishes `--messages` QoS 1 telemetry messages from N devices (seq s of every
device, then s + 1...). Each repetition uses fresh seqs, so every (device, seq) of every repetition
is checked exactly: the bare subscriber counts them, the candidate's rows are read back
(`id > the last id before the repetition`) and compared as a set. A repetition's rate is
unique (device, seq) delivered / (time the last one arrived or was committed - GO). Repetitions
alternate baseline, candidate, baseline, ... (`--reps` each), so machine noise hits both arms;
reported: median, min-max, and the median of the per-pair ratios candidate/baseline. Also consumer
CPU per message (the bare subscriber's own CPU vs the server process's CPU over the repetition),
server RSS growth per device, and a loss row: Mosquitto's *default* queue (1000 messages per
client) with a slow subscriber, next to the sized queue with the same subscriber.

    python bench/mqtt/run.py --devices 1000,10000 --messages 60000 --reps 5 [--db sqlite|postgres]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.helpers.net import free_port

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
TICK = os.sysconf("SC_CLK_TCK")
PREFIX = "bench"
SIZED = ["max_queued_messages 2400000", "max_queued_bytes 1073741824", "max_inflight_messages 200"]
LOADGEN_PROCS = 2
LOADGEN_CONNS = 2


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Broker:
    """A private mosquitto on a free loopback port; `limits` are extra config lines."""

    work: Path
    name: str
    limits: list[str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Broker:
        conf = self.work / f"{self.name}.conf"
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "persistence false", *self.limits]
        conf.write_text("\n".join(lines) + "\n")
        out = open(self.work / f"{self.name}.log", "ab")
        self.proc = subprocess.Popen(["/usr/sbin/mosquitto", "-c", str(conf)], stdout=out, stderr=out)
        import socket

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise SystemExit(f"mosquitto {self.name} did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


def _py(script: str, *args: str) -> list[str]:
    return [sys.executable, str(HERE / script), *args]


def _readline(proc: subprocess.Popen[bytes]) -> bytes:
    assert proc.stdout is not None
    return proc.stdout.readline().strip()


def start_loadgens(port: int, n: int, per_device: int, first_seq: int) -> list[subprocess.Popen[bytes]]:
    gens = []
    step = -(-n // LOADGEN_PROCS)
    for k in range(LOADGEN_PROCS):
        lo, hi = k * step, min(n, (k + 1) * step)
        args = [f"--port={port}", f"--devices={lo}:{hi}", f"--per-device={per_device}"]
        args += [
            f"--first-seq={first_seq}",
            f"--conns={LOADGEN_CONNS}",
            f"--name=loadgen{k}",
            f"--prefix={PREFIX}",
        ]
        gens.append(subprocess.Popen(_py("loadgen.py", *args), stdin=subprocess.PIPE, stdout=subprocess.PIPE))
    for g in gens:
        if _readline(g) != b"READY":
            raise SystemExit("load generator failed to connect")
    return gens


def go(gens: list[subprocess.Popen[bytes]]) -> float:
    t = time.time()
    for g in gens:
        assert g.stdin is not None
        g.stdin.write(b"GO\n")
        g.stdin.flush()
    return t


def finish(gens: list[subprocess.Popen[bytes]]) -> dict[str, Any]:
    outs = [json.loads(g.communicate(timeout=600)[0].strip().splitlines()[-1]) for g in gens]
    return {
        "published": sum(o["published"] for o in outs),
        "acked": sum(o["acked"] for o in outs),
        "publish_s": max(o["t_done"] for o in outs) - min(o["t_go"] for o in outs),
    }


def bare_rep(broker: Broker, n: int, per_device: int, first_seq: int, slow_us: float = 0.0) -> dict[str, Any]:
    sub = subprocess.Popen(
        _py(
            "bare_subscriber.py",
            f"--port={broker.port}",
            f"--devices=0:{n}",
            f"--seqs={first_seq}:{first_seq + per_device}",
            f"--prefix={PREFIX}",
            f"--slow-us={slow_us}",
            "--idle-s=3",
        ),
        stdout=subprocess.PIPE,
    )
    if _readline(sub) != b"READY":
        raise SystemExit("bare subscriber failed")
    gens = start_loadgens(broker.port, n, per_device, first_seq)
    t_go = go(gens)
    pub = finish(gens)
    out = json.loads(sub.communicate(timeout=600)[0].strip().splitlines()[-1])
    elapsed = out["t_last"] - t_go
    return {
        **pub,
        "expected": n * per_device,
        "unique": out["unique"],
        "missing": out["missing"],
        "duplicates": out["duplicates"],
        "seconds": elapsed,
        "rate": out["unique"] / elapsed if elapsed > 0 else 0.0,
        "consumer_cpu_s": out["cpu_s"],
    }


class Candidate:
    """A real fleet server whose MQTT bridge is connected to broker B."""

    def __init__(
        self, work: Path, broker: Broker, database_url: str, n_devices: int, extra_env: dict[str, str]
    ) -> None:
        from sqlalchemy import create_engine

        self.database_url = database_url
        self.engine = create_engine(database_url.replace("postgresql+psycopg", "postgresql+psycopg"))
        self.http = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGELOOP_")}
        env.update(
            EDGELOOP_DATA_DIR=str(work / "server"),
            EDGELOOP_DATABASE_URL=database_url,
            EDGELOOP_HTTP_PORT=str(self.http),
            EDGELOOP_ENROLL_PORT=str(free_port()),
            EDGELOOP_DEVICE_PORT=str(free_port()),
            EDGELOOP_DEVICE_MAX_MESSAGES_PER_S="100000",
            EDGELOOP_DEVICE_BURST="100000",
            EDGELOOP_MQTT_URL=f"mqtt://127.0.0.1:{broker.port}",
            EDGELOOP_MQTT_CLIENT_ID="edgeloop-bench-server",
            EDGELOOP_LOG_LEVEL="WARNING",
        )
        env.update(extra_env)
        subprocess.run([BIN / "edgeloop-server", "init", "--json"], env=env, check=True, capture_output=True)
        register_devices(database_url, n_devices)
        out = open(work / "server.log", "ab")
        self.proc = subprocess.Popen(
            [BIN / "edgeloop-server", "--log-level", "WARNING", "run"], env=env, stdout=out, stderr=out
        )
        import httpx

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = (work / "server.log").read_text(errors="replace")[-3000:]
                raise SystemExit(f"edgeloop server exited ({self.proc.returncode}):\n{tail}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.http}/healthz", timeout=1).status_code == 200:
                    time.sleep(1.0)  # the bridge subscribes in the lifespan; give SUBACK a moment
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise SystemExit("edgeloop server did not start")

    def _max_id(self) -> int:
        from sqlalchemy import text

        with self.engine.connect() as c:
            return int(c.execute(text("SELECT coalesce(max(id), 0) FROM telemetry_record")).scalar_one())

    def _count_after(self, last_id: int) -> int:
        from sqlalchemy import text

        with self.engine.connect() as c:
            q = text("SELECT count(*) FROM telemetry_record WHERE id > :i")
            return int(c.execute(q, {"i": last_id}).scalar_one())

    def _rows_after(self, last_id: int) -> list[tuple[str, int]]:
        from sqlalchemy import text

        with self.engine.connect() as c:
            q = text("SELECT device_id, seq FROM telemetry_record WHERE id > :i")
            return [(str(d), int(s)) for d, s in c.execute(q, {"i": last_id})]

    def rep(self, broker: Broker, n: int, per_device: int, first_seq: int) -> dict[str, Any]:
        expected_n = n * per_device
        last_id = self._max_id()
        gens = start_loadgens(broker.port, n, per_device, first_seq)
        rss0, cpu0 = rss_bytes(self.proc.pid), cpu_s(self.proc.pid)
        t_go = go(gens)
        count, t_end, t_change = 0, t_go, time.time()
        while True:
            time.sleep(0.05)
            now = time.time()
            c = self._count_after(last_id)
            if c != count:
                count, t_end, t_change = c, now, now
            if count >= expected_n or now - t_change > 10:
                break
        cpu1, rss1 = cpu_s(self.proc.pid), rss_bytes(self.proc.pid)
        pub = finish(gens)
        time.sleep(0.5)  # anything arriving late would be a duplicate or an unexpected row
        rows = self._rows_after(last_id)
        expected = {
            (f"{PREFIX}-{i:05d}", s) for i in range(n) for s in range(first_seq, first_seq + per_device)
        }
        got = set(rows)
        elapsed = t_end - t_go
        unique = len(got & expected)
        return {
            **pub,
            "expected": expected_n,
            "unique": unique,
            "missing": expected_n - unique,
            "duplicates": len(rows) - len(got),
            "unexpected": len(got - expected),
            "seconds": elapsed,
            "rate": unique / elapsed if elapsed > 0 else 0.0,
            "consumer_cpu_s": cpu1 - cpu0,
            "server_rss_before": rss0,
            "server_rss_after": rss1,
        }

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.engine.dispose()


def register_devices(database_url: str, n: int) -> None:
    from sqlmodel import Session

    from fleet_server.db import make_engine
    from fleet_server.migrate import upgrade
    from fleet_server.models import Device, utcnow

    engine = make_engine(database_url)
    upgrade(engine)
    with Session(engine) as s:
        s.add_all(
            Device(id=f"{PREFIX}-{i:05d}", profile="generic-x86", labels={}, enrolled_at=utcnow())
            for i in range(n)
        )
        s.commit()
    engine.dispose()


def summarize(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run(ns: argparse.Namespace) -> dict[str, Any]:
    sizes = [int(x) for x in ns.devices.split(",")]
    results: dict[str, Any] = {"messages": ns.messages, "reps": ns.reps, "db": ns.db, "sizes": []}
    with tempfile.TemporaryDirectory(prefix="edgeloop-mqtt-bench-") as tmp:
        work = Path(tmp)
        (work / "server").mkdir()
        a = Broker(work, "baseline", SIZED).start()
        b = Broker(work, "candidate", SIZED).start()
        cand: Candidate | None = None
        pg_name = ""
        seq = 1
        try:
            if not ns.no_bridge:
                if ns.db == "postgres":
                    from tests.conftest import make_pg_database

                    pg_name, url = make_pg_database()
                    url = url.replace("postgresql://", "postgresql+psycopg://")
                else:
                    url = f"sqlite:///{work / 'server' / 'fleet.db'}"
                extra = dict(kv.split("=", 1) for kv in ns.server_env)
                cand = Candidate(work, b, url, max(sizes), extra)
            for n in sizes:
                per_device = max(1, ns.messages // n)
                base_runs: list[dict[str, Any]] = []
                cand_runs: list[dict[str, Any]] = []
                for r in range(ns.reps):
                    base_runs.append(bare_rep(a, n, per_device, seq))
                    seq += per_device
                    log(f"[{n} devices] rep {r + 1} bare: {_short(base_runs[-1])}")
                    if cand is not None:
                        cand_runs.append(cand.rep(b, n, per_device, seq))
                        seq += per_device
                        log(f"[{n} devices] rep {r + 1} bridge: {_short(cand_runs[-1])}")
                results["sizes"].append(_size_summary(n, per_device, base_runs, cand_runs))
            results["loss_rows"] = loss_rows(work, a, ns.slow_us, seq)
        finally:
            if cand is not None:
                cand.stop()
            a.stop()
            b.stop()
            if pg_name:
                from tests.conftest import drop_pg_database

                drop_pg_database(pg_name)
    return results


def _short(r: dict[str, Any]) -> str:
    return (
        f"{r['rate']:,.0f}/s unique {r['unique']}/{r['expected']} missing {r['missing']} "
        f"dup {r['duplicates']} in {r['seconds']:.2f}s (published in {r['publish_s']:.2f}s), "
        f"consumer CPU {r['consumer_cpu_s']:.2f}s"
    )


def _size_summary(
    n: int, per_device: int, base: list[dict[str, Any]], cand: list[dict[str, Any]]
) -> dict[str, Any]:
    out: dict[str, Any] = {"devices": n, "per_device": per_device, "bare_runs": base, "bridge_runs": cand}
    out["bare_rate"] = summarize([r["rate"] for r in base])
    out["bare_per_cpu_s"] = summarize([r["unique"] / max(r["consumer_cpu_s"], 1e-9) for r in base])
    out["bare_loss"] = sum(r["missing"] for r in base)
    out["bare_duplicates"] = sum(r["duplicates"] for r in base)
    if cand:
        out["bridge_rate"] = summarize([r["rate"] for r in cand])
        out["bridge_per_cpu_s"] = summarize([r["unique"] / max(r["consumer_cpu_s"], 1e-9) for r in cand])
        out["bridge_loss"] = sum(r["missing"] for r in cand)
        out["bridge_duplicates"] = sum(r["duplicates"] for r in cand)
        out["ratio_rate"] = summarize([c["rate"] / b["rate"] for b, c in zip(base, cand, strict=True)])
        out["ratio_per_cpu"] = summarize(
            [
                (c["unique"] / max(c["consumer_cpu_s"], 1e-9))
                / (b["unique"] / max(b["consumer_cpu_s"], 1e-9))
                for b, c in zip(base, cand, strict=True)
            ]
        )
        first = cand[0]
        out["server_rss_growth_per_device_bytes"] = (
            first["server_rss_after"] - first["server_rss_before"]
        ) / n
        out["server_rss_mb"] = cand[-1]["server_rss_after"] / 2**20
    return out


def loss_rows(work: Path, sized: Broker, slow_us: float, seq: int) -> list[dict[str, Any]]:
    """The same slow subscriber behind Mosquitto's default queue limit and behind the sized one."""
    n, per_device = 1000, 20
    default = Broker(work, "default", []).start()
    try:
        rows = []
        for name, broker in (("default (1000 queued, 20 in flight)", default), ("sized", sized)):
            r = bare_rep(broker, n, per_device, seq, slow_us=slow_us)
            seq += per_device
            r["broker"] = name
            r["slow_us"] = slow_us
            log(f"[loss] {name}, subscriber {slow_us:.0f} µs/msg: {_short(r)}")
            rows.append(r)
        return rows
    finally:
        default.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", default="1000,10000")
    p.add_argument("--messages", type=int, default=60000, help="messages per repetition")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--slow-us", type=float, default=200.0, help="per-message delay of the slow subscriber")
    p.add_argument("--no-bridge", action="store_true", help="baseline and loss rows only")
    p.add_argument(
        "--server-env", action="append", default=[], metavar="EDGELOOP_X=V", help="extra server setting"
    )
    p.add_argument("--json", type=Path)
    ns = p.parse_args()
    results = run(ns)
    for s in results["sizes"]:
        line = (
            f"{s['devices']:>6} devices x {s['per_device']} msgs: bare {s['bare_rate']['median']:,.0f}/s "
            f"[{s['bare_rate']['min']:,.0f}-{s['bare_rate']['max']:,.0f}] loss {s['bare_loss']} "
            f"dup {s['bare_duplicates']}"
        )
        if "bridge_rate" in s:
            line += (
                f" | bridge {s['bridge_rate']['median']:,.0f}/s [{s['bridge_rate']['min']:,.0f}-"
                f"{s['bridge_rate']['max']:,.0f}] loss {s['bridge_loss']} dup {s['bridge_duplicates']}"
                f" | ratio x{s['ratio_rate']['median']:.2f} "
                f"[{s['ratio_rate']['min']:.2f}-{s['ratio_rate']['max']:.2f}]"
                f" per-CPU x{s['ratio_per_cpu']['median']:.2f}"
                f" | server RSS +{s['server_rss_growth_per_device_bytes']:,.0f} B/device"
            )
        print(line)
    for r in results["loss_rows"]:
        print(
            f"loss: {r['broker']}, slow subscriber {r['slow_us']:.0f} µs/msg: "
            f"{r['missing']} of {r['expected']} lost ({100 * r['missing'] / r['expected']:.1f}%), "
            f"dup {r['duplicates']}"
        )
    if ns.json:
        ns.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
