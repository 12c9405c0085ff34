"""Pure arithmetic of the replica bench: CPU seconds from /proc stat lines, the per-replica
efficiency summary (ratios against one replica), takeover statistics and the sizing estimate.

No IO here (run.py reads /proc, the database and the servers and hands the numbers in).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

GOAL_RATIO = 0.85  # per-replica efficiency at N replicas vs one replica
TAKEOVER_GOAL_S = 10.0


def cpu_seconds(stat_line: str, ticks_per_s: int) -> float:
    """utime + stime of a `/proc/<pid>/stat` line (the command name may contain spaces and ')')."""
    fields = stat_line.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / ticks_per_s


def parent_pid(stat_line: str) -> int:
    return int(stat_line.rsplit(")", 1)[1].split()[1])


def delta(before: Mapping[int, float], after: Mapping[int, float]) -> float:
    """CPU used between two samples of a set of processes: processes that ended in between count
    with their last sample (lost: what they used after it), new ones from zero."""
    return sum(after.get(pid, before.get(pid, 0.0)) - before.get(pid, 0.0) for pid in {*before, *after})


def _stats(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"min": None, "median": None, "max": None}
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def summarize(runs: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Per replica count: median efficiency (persisted messages per server CPU-second, gross and
    net of the replicas' idle CPU), PostgreSQL CPU per message, and the ratio to one replica."""
    by_n: dict[int, list[Mapping[str, Any]]] = {}
    for r in runs:
        by_n.setdefault(int(r["replicas"]), []).append(r)
    out: dict[str, Any] = {}
    for n, rs in sorted(by_n.items()):
        out[str(n)] = {
            "reps": len(rs),
            "persisted_per_s": _stats([r["persisted_per_s"] for r in rs]),
            "persisted_per_server_cpu_s": _stats([r["persisted_per_server_cpu_s"] for r in rs]),
            "persisted_per_server_cpu_s_net_idle": _stats(
                [r["persisted_per_server_cpu_s_net_idle"] for r in rs]
            ),
            "pg_cpu_ms_per_persisted": _stats([r["pg_cpu_ms_per_persisted"] for r in rs]),
            "idle_cpu_cores_per_replica": _stats([r["idle_cpu_cores_per_replica"] for r in rs]),
            "msgs_per_flush": _stats([r["msgs_per_flush"] for r in rs if r.get("msgs_per_flush")]),
        }
    base = out.get("1")
    for count, row in out.items():
        for key in ("persisted_per_server_cpu_s", "persisted_per_server_cpu_s_net_idle"):
            one = base[key]["median"] if base else None
            median = row[key]["median"]
            row[f"ratio_{key}_vs_1"] = round(median / one, 3) if one and median else None
        ratio = row["ratio_persisted_per_server_cpu_s_vs_1"]
        row["goal_met"] = None if count == "1" or ratio is None else ratio >= GOAL_RATIO
    return out


def takeover_summary(samples: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Per lease name: min/median/max seconds from the holder's SIGKILL to the new holder's claim."""
    per: dict[str, list[float]] = {}
    for s in samples:
        for name, secs in s["takeover_s"].items():
            per.setdefault(name, []).append(float(secs))
    out = {
        name: {"reps": len(v), **_stats(v), "goal_met": max(v) <= TAKEOVER_GOAL_S} for name, v in per.items()
    }
    every = [x for v in per.values() for x in v]
    out["all"] = {
        "reps": len(every),
        **_stats(every),
        "goal_met": bool(every) and max(every) <= TAKEOVER_GOAL_S,
    }
    return out


def estimate(
    *,
    devices: int,
    messages_per_device_per_min: float,
    server_cpu_s_per_msg: float,
    pg_cpu_s_per_msg: float,
    bytes_per_stream: float = 99_000.0,
    streams_per_replica: int = 10_000,
    core_utilization: float = 0.6,
    telemetry_row_bytes: float = 0.0,
    telemetry_per_device_per_min: float = 0.0,
) -> dict[str, Any]:
    """Replicas and PostgreSQL for a fleet, from measured per-message CPU costs.

    A replica is one Python process: it uses at most about one core, planned at
    `core_utilization`; it also holds at most `streams_per_replica` gRPC streams (memory:
    `bytes_per_stream` each, BENCHMARKS "Fleet scale"). PostgreSQL cores at the same utilization;
    telemetry storage per day from the measured bytes per stored row."""
    rate = devices * messages_per_device_per_min / 60.0
    by_cpu = rate * server_cpu_s_per_msg / core_utilization
    by_streams = devices / streams_per_replica
    replicas = max(1, int(-(-max(by_cpu, by_streams) // 1)))
    pg_cores = rate * pg_cpu_s_per_msg / core_utilization
    return {
        "devices": devices,
        "messages_per_s": round(rate, 1),
        "replicas": replicas,
        "replicas_by_cpu": round(by_cpu, 2),
        "replicas_by_streams": round(by_streams, 2),
        "replica_rss_gb": round(devices / replicas * bytes_per_stream / 1e9, 2),
        "pg_cores": round(pg_cores, 2),
        "telemetry_gb_per_day": round(
            devices * telemetry_per_device_per_min * 1440 * telemetry_row_bytes / 1e9, 1
        ),
    }
