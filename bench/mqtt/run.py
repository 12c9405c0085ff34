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


def bare_drain_rep(broker: Broker, n: int, per_device: int, first_seq: int) -> dict[str, Any]:
    """The subscriber's persistent session is primed, everything is published while it is away,
    then it drains the broker's queue: rate = unique / (last - first delivery), no load generator."""
    common = [
        f"--port={broker.port}",
        f"--devices=0:{n}",
        f"--seqs={first_seq}:{first_seq + per_device}",
        f"--prefix={PREFIX}",
        "--session=bench-bare-drain",
        "--idle-s=3",
    ]
    prime = subprocess.run(_py("bare_subscriber.py", *common, "--prime"), capture_output=True, check=True)
    if prime.stdout.strip() != b"READY":
        raise SystemExit("bare subscriber (prime) failed")
    gens = start_loadgens(broker.port, n, per_device, first_seq)
    go(gens)
    pub = finish(gens)
    sub = subprocess.Popen(_py("bare_subscriber.py", *common), stdout=subprocess.PIPE)
    if _readline(sub) != b"READY":
        raise SystemExit("bare subscriber failed")
    out = json.loads(sub.communicate(timeout=600)[0].strip().splitlines()[-1])
    elapsed = out["t_last"] - out["t_first"]
    return {
        **pub,
        "expected": n * per_device,
        "unique": out["unique"],
        "missing": out["missing"],
        "duplicates": out["duplicates"],
        "seconds": elapsed,
        "rate": out["unique"] / elapsed if elapsed > 0 else 0.0,
        "consumer_cpu_s": out["cpu_s"],
        "cpu_counted_msgs": out["unique"],
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
        self.env = env
        self.work = work
        subprocess.run([BIN / "edgeloop-server", "init", "--json"], env=env, check=True, capture_output=True)
        register_devices(database_url, n_devices)
        self.proc = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        import httpx

        out = open(self.work / "server.log", "ab")
        proc = subprocess.Popen(
            [BIN / "edgeloop-server", "--log-level", "WARNING", "run"], env=self.env, stdout=out, stderr=out
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = (self.work / "server.log").read_text(errors="replace")[-3000:]
                raise SystemExit(f"edgeloop server exited ({proc.returncode}):\n{tail}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.http}/healthz", timeout=1).status_code == 200:
                    time.sleep(1.0)  # the bridge subscribes in the lifespan; give SUBACK a moment
                    return proc
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

    def drain_rep(self, broker: Broker, n: int, per_device: int, first_seq: int) -> dict[str, Any]:
        """Stop the server, publish everything (its persistent session queues it), start it again:
        the rate is rows / (last commit - first commit) from `received_at`, no load generator running."""
        from sqlalchemy import func
        from sqlmodel import select

        from fleet_server.models import TelemetryRecord

        expected_n = n * per_device
        last_id = self._max_id()
        self.proc.terminate()
        self.proc.wait(30)
        gens = start_loadgens(broker.port, n, per_device, first_seq)
        go(gens)
        pub = finish(gens)
        self.proc = self._start()
        # CPU per message from here on: the process's start-up is not the bridge's cost.
        cpu0, count0 = cpu_s(self.proc.pid), self._count_after(last_id)
        count, t_change = count0, time.time()
        while True:
            time.sleep(0.05)
            now = time.time()
            c = self._count_after(last_id)
            if c != count:
                count, t_change = c, now
            if count >= expected_n or now - t_change > 10:
                break
        cpu1 = cpu_s(self.proc.pid)
        time.sleep(0.5)
        rows = self._rows_after(last_id)
        col = TelemetryRecord.received_at
        q = select(func.min(col), func.max(col)).where(TelemetryRecord.id > last_id)  # type: ignore[operator]
        with self.engine.connect() as conn:
            first, last = conn.execute(q).one()
        expected = {
            (f"{PREFIX}-{i:05d}", s) for i in range(n) for s in range(first_seq, first_seq + per_device)
        }
        got = set(rows)
        unique = len(got & expected)
        elapsed = (last - first).total_seconds() if first and last else 0.0
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
            "cpu_counted_msgs": count - count0,
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
        c = Broker(work, "baseline-drain", SIZED).start()
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
            modes = ns.modes.split(",")
            for n in sizes:
                per_device = max(1, ns.messages // n)
                runs: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {
                    m: ([], []) for m in modes
                }
                for r in range(ns.reps):
                    for mode in modes:
                        base_runs, cand_runs = runs[mode]
                        if mode == "live":
                            base_runs.append(bare_rep(a, n, per_device, seq))
                        else:
                            base_runs.append(bare_drain_rep(c, n, per_device, seq))
                        seq += per_device
                        log(f"[{n} devices, {mode}] rep {r + 1} bare: {_short(base_runs[-1])}")
                        if cand is not None:
                            rep = cand.rep if mode == "live" else cand.drain_rep
                            cand_runs.append(rep(b, n, per_device, seq))
                            seq += per_device
                            log(f"[{n} devices, {mode}] rep {r + 1} bridge: {_short(cand_runs[-1])}")
                for mode in modes:
                    results["sizes"].append(_size_summary(n, per_device, mode, *runs[mode]))
            results["loss_rows"] = loss_rows(work, a, ns.slow_us, seq)
            if ns.fanout_devices:
                results["fanout"] = fanout_rows(a, ns.fanout_devices, ns.reps)
        finally:
            if cand is not None:
                cand.stop()
            a.stop()
            b.stop()
            c.stop()
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


def _per_cpu(r: dict[str, Any]) -> float:
    return float(r.get("cpu_counted_msgs", r["unique"])) / max(float(r["consumer_cpu_s"]), 1e-9)


def _size_summary(
    n: int, per_device: int, mode: str, base: list[dict[str, Any]], cand: list[dict[str, Any]]
) -> dict[str, Any]:
    out: dict[str, Any] = {"devices": n, "per_device": per_device, "mode": mode}
    out |= {"bare_runs": base, "bridge_runs": cand}
    out["bare_rate"] = summarize([r["rate"] for r in base])
    out["bare_per_cpu_s"] = summarize([_per_cpu(r) for r in base])
    out["bare_loss"] = sum(r["missing"] for r in base)
    out["bare_duplicates"] = sum(r["duplicates"] for r in base)
    if cand:
        out["bridge_rate"] = summarize([r["rate"] for r in cand])
        out["bridge_per_cpu_s"] = summarize([_per_cpu(r) for r in cand])
        out["bridge_loss"] = sum(r["missing"] for r in cand)
        out["bridge_duplicates"] = sum(r["duplicates"] for r in cand)
        out["ratio_rate"] = summarize([c["rate"] / b["rate"] for b, c in zip(base, cand, strict=True)])
        out["ratio_per_cpu"] = summarize([_per_cpu(c) / _per_cpu(b) for b, c in zip(base, cand, strict=True)])
        first = cand[0]
        if "server_rss_after" in first:
            growth = first["server_rss_after"] - first["server_rss_before"]
            out["server_rss_growth_per_device_bytes"] = growth / n
            out["server_rss_mb"] = cand[-1]["server_rss_after"] / 2**20
    return out


def fanout_rows(broker: Broker, n: int, reps: int) -> list[dict[str, Any]]:
    """Broker fan-out: one publisher, one retained DesiredState per device, n devices subscribed."""
    from bench.mqtt.fanout import publish_desired

    ids = [f"{PREFIX}-{i:05d}" for i in range(n)]
    rows = []
    for r in range(reps):
        gen = 1000 + r
        args = [f"--port={broker.port}", f"--devices={n}", f"--generation={gen}", f"--prefix={PREFIX}"]
        dev = subprocess.Popen(_py("fanout.py", *args), stdout=subprocess.PIPE)
        if _readline(dev) != b"READY":
            raise SystemExit("fan-out devices failed")
        t0 = publish_desired(broker.port, ids, gen)
        out = json.loads(dev.communicate(timeout=120)[0].strip().splitlines()[-1])
        rows.append({"devices": n, "got": out["got"], "seconds": out["t_last"] - t0})
        log(f"[fan-out] rep {r + 1}: {out['got']}/{n} devices got theirs in {rows[-1]['seconds']:.3f}s")
    return rows


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
    p.add_argument("--modes", default="live,drain", help="live (publishing while consuming), drain")
    p.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--slow-us", type=float, default=200.0, help="per-message delay of the slow subscriber")
    p.add_argument("--fanout-devices", type=int, default=1000, help="0 = skip the fan-out rows")
    p.add_argument("--no-bridge", action="store_true", help="baseline and loss rows only")
    p.add_argument(
        "--server-env", action="append", default=[], metavar="EDGELOOP_X=V", help="extra server setting"
    )
    p.add_argument("--json", type=Path)
    ns = p.parse_args()
    results = run(ns)
    for s in results["sizes"]:
        line = (
            f"{s['devices']:>6} devices x {s['per_device']} msgs, {s['mode']}: "
            f"bare {s['bare_rate']['median']:,.0f}/s "
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
            )
            if "server_rss_growth_per_device_bytes" in s:
                line += f" | server RSS +{s['server_rss_growth_per_device_bytes']:,.0f} B/device"
        print(line)
    for r in results["loss_rows"]:
        print(
            f"loss: {r['broker']}, slow subscriber {r['slow_us']:.0f} µs/msg: "
            f"{r['missing']} of {r['expected']} lost ({100 * r['missing'] / r['expected']:.1f}%), "
            f"dup {r['duplicates']}"
        )
    if results.get("fanout"):
        secs = [r["seconds"] for r in results["fanout"]]
        got = min(r["got"] for r in results["fanout"])
        print(
            f"fan-out: {results['fanout'][0]['devices']} retained desired states, all delivered to "
            f"{got} devices in median {statistics.median(secs):.3f}s [{min(secs):.3f}-{max(secs):.3f}]"
        )
    if ns.json:
        ns.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
