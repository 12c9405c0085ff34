"""Replica bench (issue 16): telemetry persisted and devices held by 1, 2 and 3 `edgeloop-server`
replicas on one PostgreSQL, behind a TCP balancer, with the same simulated fleet; and the
takeover time of each lease-held singleton after its holder is SIGKILLed.

    .venv/bin/python -m bench.replicas.run [--replicas 1,2,3] [--reps 2] [--devices-per-replica 200] \
        [--devices N] [--heartbeat-s 2] [--telemetry-per-min 30] [--window-s 30] [--takeover-reps 5] \
        [--json bench/replicas/results.json]

Load: `--devices-per-replica` (default) keeps each replica's load the same at every replica
count (the fleet grows with the replicas, as an operator scales them), so a lower efficiency at
N replicas is a cost of having N (coordination); `--devices N` splits one fleet over the
replicas instead, so each replica's group commits get smaller as N grows (fewer messages per
flush: the per-message cost rises without any coordination; `msgs_per_flush` shows it).

One PostgreSQL database and one seeded data dir (CA, keys) for the whole bench, so the fleet is
enrolled once. Per run (replica counts interleaved, order reversed on odd reps): start N
replicas (same data dir, `tests/helpers/replicas.py`) and the balancer in its own process; idle
window (each replica's CPU with no devices: heartbeats, leases, bus, engine ticks); the fleet
simulator (bench/fleet_sim, gRPC, one worker process) connects every device through the
balancer; after `--settle-s`, a `--window-s` window:

- persisted = heartbeats (DeviceReport) + telemetry records acked in the window (the server acks
  after the group commit), from the simulator; each replica's own share from its /healthz ingest;
- server CPU = utime + stime of every replica process (/proc/<pid>/stat) over the window;
- efficiency = persisted / server CPU-s (the whole cluster's; per replica in `per_replica`), and
  the same net of the replicas' idle CPU; the ratio at N replicas vs 1 is the coordination tax;
- PostgreSQL CPU = the backends connected to the bench database (pg_stat_activity pids, their
  /proc CPU) and, as an upper bound, every postgres process on the host (other databases and
  users of the same server included: on a shared box read it as such);
- devices held per replica: open connections per backend at the balancer, and `device_presence`.

Takeover: 2 replicas (no device load), `--takeover-reps` times: SIGKILL the replica holding the
most leases; per lease it held, seconds from the kill to the new holder's `acquired_at`
(database clock, same host); the killed replica is started again (new replica id).

Everything runs on one machine: the simulator, the balancer, PostgreSQL and the replicas share
its cores. Load average at the start and end of each run is in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.replicas.stats import cpu_seconds, delta, estimate, parent_pid, summarize, takeover_summary
from tests.helpers.procs import wait_until
from tests.helpers.replicas import Replicas

TICK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- /proc


def _stat(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None


def cpu_of(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        line = _stat(pid)
        if line is not None:
            out[pid] = cpu_seconds(line, TICK)
    return out


def host_pids(names: tuple[str, ...]) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().strip() in names:
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


def children(of: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (line := _stat(int(d.name))) is not None and parent_pid(line) == of:
            out.append(int(d.name))
    return out


# ---------------------------------------------------------------- one measurement


class Sampler:
    """Snapshots of everything a window needs, taken at its start and end."""

    def __init__(self, cluster: Replicas) -> None:
        self.cluster = cluster
        self.pg_unreadable = 0

    def db_backends(self) -> list[int]:
        return [int(r[0]) for r in self.cluster.query(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )]  # fmt: skip

    def sim_pids(self) -> list[int]:
        """The simulator's worker processes: our children that are neither replicas nor the balancer."""
        ours = {*self.cluster.pids(), self.cluster.balancer_pid}
        return [p for p in children(os.getpid()) if p not in ours]

    def ingest(self) -> list[tuple[int, int]]:
        """(rows persisted, flushes) per replica, from its /healthz ingest counters."""
        out = []
        for s in self.cluster.servers:
            stats = httpx.get(s.url + "/healthz", timeout=10).json()["ingest"]
            out.append((int(stats["reports"]) + int(stats["telemetry_rows"]), int(stats["flushes"])))
        return out

    def take(self, sim: Any | None = None) -> dict[str, Any]:
        pg_all = host_pids(("postgres", "postmaster"))
        pg_cpu = cpu_of(pg_all)
        self.pg_unreadable = len(pg_all) - len(pg_cpu)
        counters = sim.stats().counters if sim is not None else {}
        lb = self.cluster.balancer_pid
        return {
            "t": time.monotonic(),
            "replicas": [cpu_of([p]).get(p, 0.0) for p in self.cluster.pids()],
            "pg_all": pg_cpu,
            "pg_db": cpu_of(self.db_backends()),
            "sim": cpu_of(self.sim_pids()) if sim is not None else {},
            "balancer": cpu_of([lb]).get(lb, 0.0) if lb else 0.0,
            "ingest": self.ingest(),
            "acked": int(counters.get("reports_acked", 0)) + int(counters.get("records_acked", 0)),
            "reports_acked": int(counters.get("reports_acked", 0)),
            "records_acked": int(counters.get("records_acked", 0)),
        }


def held(cluster: Replicas) -> dict[str, Any]:
    """Devices held per replica now: open connections per backend at the balancer (its log's last
    line: device port -> count) and `device_presence` rows per replica."""
    active: dict[str, int] = {}
    for line in reversed((cluster.root / "balancer.log").read_text().strip().splitlines()):
        try:
            active = json.loads(line)
            break
        except ValueError:
            continue
    conns = [int(active.get(str(s.device_port), 0)) for s in cluster.servers]
    rows = cluster.query("SELECT replica_id, count(*) FROM device_presence GROUP BY replica_id")
    presence = {str(r[0]): int(r[1]) for r in rows}
    return {"balancer_connections": conns, "presence": [presence.get(rid, 0) for rid in cluster.replica_ids]}


def one_run(
    n: int, rep: int, args: argparse.Namespace, work: Path, db_url: str, token: str
) -> dict[str, Any]:
    from bench.fleet_sim.config import SimConfig
    from bench.fleet_sim.run import FleetSim

    env = {"EDGELOOP_LOG_LEVEL": "WARNING"}
    cluster = Replicas(work / "cluster", db_url, n=n, env=env, balancer_process=True, admin_token=token)
    devices = args.devices or args.devices_per_replica * n
    load0 = os.getloadavg()
    log(f"rep {rep}: {n} replica(s): starting")
    cluster.start()
    sim = None
    try:
        sampler = Sampler(cluster)
        time.sleep(3)
        i0 = sampler.take()
        time.sleep(args.idle_s)
        i1 = sampler.take()
        idle = [(b - a) / (i1["t"] - i0["t"]) for a, b in zip(i0["replicas"], i1["replicas"], strict=True)]
        front = cluster.front
        cfg = SimConfig(
            server=front.url, token=token, ca=front.ca_file, devices=devices,
            enroll_target=front.enroll_target, grpc_target=f"127.0.0.1:{front.device_port}",
            ramp_per_s=args.ramp_per_s, heartbeat_s=args.heartbeat_s,
            telemetry_per_min=args.telemetry_per_min,
            ack_timeout_s=15, connect_timeout_s=15, backoff_initial_s=0.5, backoff_max_s=5, workers=1,
            identities=work / "identities",
        )  # fmt: skip
        sim = FleetSim(cfg)
        sim.start()
        if not sim.wait_connected(240):
            raise SystemExit(f"only {sim.stats().connected}/{devices} devices connected")
        time.sleep(args.settle_s)
        s0 = sampler.take(sim)
        time.sleep(args.window_s / 2)
        holding = held(cluster)
        time.sleep(args.window_s / 2)
        s1 = sampler.take(sim)
        dt = s1["t"] - s0["t"]
        cpu = [b - a for a, b in zip(s0["replicas"], s1["replicas"], strict=True)]
        ingest = [b[0] - a[0] for a, b in zip(s0["ingest"], s1["ingest"], strict=True)]
        flushes = [b[1] - a[1] for a, b in zip(s0["ingest"], s1["ingest"], strict=True)]
        persisted = s1["acked"] - s0["acked"]
        server_cpu = sum(cpu)
        net = server_cpu - sum(idle) * dt
        pg_db, pg_all = delta(s0["pg_db"], s1["pg_db"]), delta(s0["pg_all"], s1["pg_all"])
        result = {
            "replicas": n, "rep": rep, "devices": devices, "window_s": round(dt, 2),
            "load_avg_start": load0, "load_avg_end": os.getloadavg(),
            "persisted": persisted, "persisted_per_s": round(persisted / dt, 1),
            "reports_acked": s1["reports_acked"] - s0["reports_acked"],
            "records_acked": s1["records_acked"] - s0["records_acked"],
            "server_cpu_s": round(server_cpu, 2), "server_cpu_cores": round(server_cpu / dt, 3),
            "persisted_per_server_cpu_s": round(persisted / server_cpu, 1) if server_cpu else None,
            "persisted_per_server_cpu_s_net_idle": round(persisted / net, 1) if net > 0 else None,
            "idle_cpu_cores_per_replica": round(statistics.mean(idle), 4),
            "msgs_per_flush": round(sum(ingest) / sum(flushes), 2) if sum(flushes) else None,
            "per_replica": [
                {"cpu_cores": round(c / dt, 3), "persisted": g,
                 "persisted_per_cpu_s": round(g / c, 1) if c else None, "idle_cpu_cores": round(i, 4),
                 "msgs_per_flush": round(g / f, 2) if f else None}
                for c, g, i, f in zip(cpu, ingest, idle, flushes, strict=True)
            ],
            "held": holding,
            "pg_db_backends_cpu_s": round(pg_db, 2), "pg_host_cpu_s": round(pg_all, 2),
            "pg_cpu_ms_per_persisted": round(pg_db / persisted * 1000, 4) if persisted else None,
            "pg_host_cpu_ms_per_persisted": round(pg_all / persisted * 1000, 4) if persisted else None,
            "pg_processes_unreadable": sampler.pg_unreadable,
            "sim_cpu_cores": round(delta(s0["sim"], s1["sim"]) / dt, 3),
            "balancer_cpu_cores": round((s1["balancer"] - s0["balancer"]) / dt, 3),
        }  # fmt: skip
        log(f"rep {rep}: {n} replica(s): {result['persisted_per_s']}/s, "
            f"{result['persisted_per_server_cpu_s']} per server CPU-s, "
            f"PG {result['pg_cpu_ms_per_persisted']} ms per msg, held {holding}")  # fmt: skip
        return result
    finally:
        if sim is not None:
            sim.stop(drain_s=5)
        cluster.stop()


# ---------------------------------------------------------------- takeover


def takeovers(args: argparse.Namespace, work: Path, db_url: str, token: str) -> list[dict[str, Any]]:
    cluster = Replicas(work / "cluster", db_url, n=args.takeover_replicas, balancer_process=True,
                       env={"EDGELOOP_LOG_LEVEL": "WARNING"}, admin_token=token)  # fmt: skip
    cluster.start()
    samples: list[dict[str, Any]] = []
    try:
        for rep in range(args.takeover_reps):

            def settled() -> dict[str, Any] | None:
                now = cluster.leases()
                live = {cluster.replica_ids[i] for i in range(cluster.n) if cluster.alive(i)}
                return now if now and all(x.holder in live for x in now.values()) else None

            try:
                leases = wait_until(settled, 60, interval=0.2, what="leases held by live replicas")
            except AssertionError:
                log("takeover: no lease rows held by live replicas (singletons not wired?)")
                break
            counts = [sum(cluster.index_of(x.holder) == i for x in leases.values()) for i in range(cluster.n)]
            victim = counts.index(max(counts))
            names = sorted(n for n, x in leases.items() if cluster.index_of(x.holder) == victim)
            killed_at = cluster.kill(victim)
            t0 = time.monotonic()
            observed: dict[str, float] = {}
            taken: dict[str, float] = {}
            while len(taken) < len(names) and time.monotonic() - t0 < 60:
                now = cluster.leases()
                for name in names:
                    x = now.get(name)
                    if name not in taken and x is not None and x.holder != cluster.replica_ids[victim]:
                        taken[name] = round(x.acquired_s - killed_at, 3)
                        observed[name] = round(time.monotonic() - t0, 3)
                time.sleep(0.05)
            sample = {"rep": rep, "victim": cluster.replica_ids[victim], "leases": names,
                      "takeover_s": taken, "observed_s": observed,
                      "not_taken_over": sorted(set(names) - set(taken))}  # fmt: skip
            log(f"takeover rep {rep}: {sample}")
            samples.append(sample)
            cluster.restart(victim)
    finally:
        cluster.stop()
    return samples


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replicas", default="1,2,3")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--devices-per-replica", type=int, default=200)
    p.add_argument("--devices", type=int, default=0, help="one fleet of this size split over the replicas")
    p.add_argument("--heartbeat-s", type=float, default=2.0)
    p.add_argument("--telemetry-per-min", type=float, default=30.0)
    p.add_argument("--ramp-per-s", type=float, default=100.0)
    p.add_argument("--idle-s", type=float, default=5.0)
    p.add_argument("--settle-s", type=float, default=5.0)
    p.add_argument("--window-s", type=float, default=30.0)
    p.add_argument("--takeover-reps", type=int, default=5)
    p.add_argument("--takeover-replicas", type=int, default=2)
    p.add_argument("--work", type=Path, default=None, help="scratch dir (default: a temp dir)")
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "replicas" / "results.json")
    args = p.parse_args(argv)

    from tests.conftest import drop_pg_database, make_pg_database

    work = args.work or Path(tempfile.mkdtemp(prefix="edgeloop-replicas-bench-"))
    name, db_url = make_pg_database()
    started = time.time()
    try:
        seed = Replicas(work / "cluster", db_url, n=1)
        (work / "cluster" / "replica-0").mkdir(parents=True, exist_ok=True)
        token = seed.servers[0].init()
        counts = [int(x) for x in args.replicas.split(",")]
        runs = []
        for rep in range(args.reps):
            for n in counts if rep % 2 == 0 else list(reversed(counts)):
                runs.append(one_run(n, rep, args, work, db_url, token))
        samples = takeovers(args, work, db_url, token) if args.takeover_reps else []
        summary = summarize(runs)
        one = summary.get("1", {})
        per_msg = (one.get("persisted_per_server_cpu_s") or {}).get("median")
        pg_ms = (one.get("pg_cpu_ms_per_persisted") or {}).get("median")
        row_bytes = cluster_row_bytes(db_url)
        sizing = []
        if per_msg and pg_ms:
            for devices in (100_000, 1_000_000):  # one heartbeat + one telemetry record a minute
                sizing.append(estimate(
                    devices=devices, messages_per_device_per_min=2, server_cpu_s_per_msg=1 / per_msg,
                    pg_cpu_s_per_msg=pg_ms / 1000, telemetry_row_bytes=row_bytes,
                    telemetry_per_device_per_min=1,
                ))  # fmt: skip
        out = {
            "command": " ".join([".venv/bin/python -m bench.replicas.run", *(argv or sys.argv[1:])]),
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "wall_s": round(time.time() - started, 1),
            "cpus": os.cpu_count(),
            "config": {k: str(v) for k, v in vars(args).items()},
            "summary": summary,
            "takeover": takeover_summary(samples),
            "takeover_samples": samples,
            "telemetry_row_bytes": row_bytes,
            "sizing": sizing,
            "runs": runs,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1, default=str))
        print(json.dumps({"summary": summary, "takeover": out["takeover"], "sizing": sizing}, indent=1))
        log(f"wrote {args.json} ({out['wall_s']} s)")
    finally:
        drop_pg_database(name)
    return 0


def cluster_row_bytes(db_url: str) -> float:
    """Bytes per stored telemetry row (table + indexes + TOAST) in the bench database."""
    import psycopg

    from tests.helpers.replicas import pg_dsn

    with psycopg.connect(pg_dsn(db_url), autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_total_relation_size('telemetry_record'), (SELECT count(*) FROM telemetry_record)"
        ).fetchone()
    assert row is not None
    return round(row[0] / row[1], 1) if row[1] else 0.0


if __name__ == "__main__":
    sys.exit(main())
