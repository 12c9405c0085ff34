"""Agent inference benchmark: raw in-process `session.run` vs the agent's local API (gRPC over UDS).

Reproduce (from the repo root, ~3-4 minutes on 2 cores):

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.inference.run --out /tmp/inference-bench.json

For each model (digits CNN fp32 and int8 QDQ, MiniLM-L6 int8 and fp32, all ONNX, batch 1):
  * c=1: p50/p95 latency of raw `InferenceSession.run` (a clean process, the agent's session options) and of
    `EdgeloopClient.predict` against a separate agent process; overhead = API p50 - raw p50.
  * c=16: throughput of 16 raw threads in-process vs 16 API clients (4 processes x 4 threads) against
    the agent without and with micro-batching (MB).
  Both over gRPC and over the framed fast path (`agent/serving/framed.py`, same messages).
Then the agent process's RSS with the digits int8 model loaded and its idle CPU over 10 s.
Everything runs on the same machine: at c=16 the client processes compete with the agent for the cores.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from agent.profile import load_profile
from bench.inference.artifacts import Artifact, digits_artifacts, minilm_artifacts

CONCURRENCY = 16
CLIENT_PROCS = 4


def _latencies(call: Any, n: int) -> list[float]:
    for _ in range(max(5, n // 20)):
        call()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        call()
        out.append(time.perf_counter() - t)
    return out


def _client_proc(
    socket: str, sample: dict[str, np.ndarray], threads: int, duration: float, start_at: float, framed: bool
) -> int:
    from agent.client import EdgeloopClient

    fast = Path(socket).with_suffix(".fast") if framed else None
    clients = [EdgeloopClient(Path(socket), fast_socket=fast) for _ in range(threads)]
    for c in clients:
        c.predict(sample)
    time.sleep(max(0.0, start_at - time.time()))
    counts = [0] * threads
    stop = start_at + duration

    def worker(k: int) -> None:
        while time.time() < stop:
            clients[k].predict(sample)
            counts[k] += 1

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return sum(counts)


def _api_throughput(
    socket: Path, sample: dict[str, np.ndarray], duration: float, framed: bool = False
) -> float:
    ctx = mp.get_context("spawn")
    start_at = time.time() + 3.0  # time for the spawned interpreters to import and connect
    per_proc = CONCURRENCY // CLIENT_PROCS
    with ctx.Pool(CLIENT_PROCS) as pool:
        args = [(str(socket), sample, per_proc, duration, start_at, framed)] * CLIENT_PROCS
        return sum(pool.starmap(_client_proc, args)) / duration


class Agent:
    """A separate agent process serving one artifact (bench/inference/agent_proc.py)."""

    def __init__(self, artifact: Path, work: Path, *extra: str) -> None:
        work.mkdir(parents=True, exist_ok=True)
        self.socket = work / "api.sock"
        cmd = [
            sys.executable,
            "-m",
            "bench.inference.agent_proc",
            str(artifact),
            str(self.socket),
            str(work / "slots"),
        ]
        self.proc = subprocess.Popen([*cmd, *extra], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"agent did not start: {line!r}")
        self.pid = self.proc.pid

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_model(art: Artifact, work: Path, *, n: int, duration: float) -> dict[str, float]:
    from agent.client import EdgeloopClient

    work.mkdir(parents=True, exist_ok=True)
    sample = work / "sample.npz"
    np.savez(sample, **art.sample)
    cmd = ["-m", "bench.inference.raw_proc", str(art.path), str(sample), str(n), str(duration)]
    raw_out = subprocess.run([sys.executable, *cmd], check=True, capture_output=True, text=True).stdout
    result: dict[str, float] = json.loads(raw_out.strip().splitlines()[-1])
    raw_thr = result["raw_c16_rps"]
    agent = Agent(art.path, work / "plain")
    try:
        with EdgeloopClient(agent.socket) as client:
            cpu_before, client_before = _cpu_seconds(agent.pid), time.process_time()
            api = _latencies(lambda: client.predict(art.sample), n)
            calls = n + max(5, n // 20)
            result["agent_cpu_us_per_req"] = (_cpu_seconds(agent.pid) - cpu_before) / calls * 1e6
            result["client_cpu_us_per_req"] = (time.process_time() - client_before) / calls * 1e6
        with EdgeloopClient(agent.socket, fast_socket=agent.socket.with_suffix(".fast")) as client:
            cpu_before, client_before = _cpu_seconds(agent.pid), time.process_time()
            fast = _latencies(lambda: client.predict(art.sample), n)
            result["fast_agent_cpu_us_per_req"] = (_cpu_seconds(agent.pid) - cpu_before) / calls * 1e6
            result["fast_client_cpu_us_per_req"] = (time.process_time() - client_before) / calls * 1e6
        result["api_p50_us"] = float(np.percentile(api, 50) * 1e6)
        result["api_p95_us"] = float(np.percentile(api, 95) * 1e6)
        result["fast_p50_us"] = float(np.percentile(fast, 50) * 1e6)
        result["fast_p95_us"] = float(np.percentile(fast, 95) * 1e6)
        result["api_c16_rps"] = _api_throughput(agent.socket, art.sample, duration)
        result["fast_c16_rps"] = _api_throughput(agent.socket, art.sample, duration, framed=True)
    finally:
        agent.close()
    agent = Agent(art.path, work / "batched", "--micro-batch", "--max-batch", "32")
    try:
        result["api_mb_c16_rps"] = _api_throughput(agent.socket, art.sample, duration)
        result["fast_mb_c16_rps"] = _api_throughput(agent.socket, art.sample, duration, framed=True)
    finally:
        agent.close()
    result["overhead_p50_us"] = result["api_p50_us"] - result["raw_p50_us"]
    result["fast_overhead_p50_us"] = result["fast_p50_us"] - result["raw_p50_us"]
    # CPU-time view (robust on a shared machine): all CPU an API call costs minus the bare run's CPU.
    raw_cpu = result["raw_cpu_us_per_call"]
    result["cpu_overhead_us"] = result["agent_cpu_us_per_req"] + result["client_cpu_us_per_req"] - raw_cpu
    result["fast_cpu_overhead_us"] = (
        result["fast_agent_cpu_us_per_req"] + result["fast_client_cpu_us_per_req"] - raw_cpu
    )
    for key in ("api_c16_rps", "api_mb_c16_rps", "fast_c16_rps", "fast_mb_c16_rps"):
        result[key.replace("_rps", "_ratio")] = result[key] / raw_thr
    return result


def grpc_floor(work: Path) -> float:
    """p50 µs of an empty Predict against a servicer that does nothing: the transport's own cost."""
    from agent.client import EdgeloopClient

    agent = Agent(Path("unused"), work, "--echo")
    try:
        with EdgeloopClient(agent.socket) as client:
            lat = _latencies(lambda: client.predict_full({}), 2000)
        return float(np.percentile(lat, 50) * 1e6)
    finally:
        agent.close()


def bench_footprint(art: Artifact, work: Path, idle_s: float) -> dict[str, float]:
    from agent.client import EdgeloopClient

    agent = Agent(art.path, work / "footprint")
    try:
        with EdgeloopClient(agent.socket) as client:
            for _ in range(100):
                client.predict(art.sample)
        time.sleep(1.0)
        rss = _status_kb(agent.pid, "VmRSS") / 1024
        before = _cpu_seconds(agent.pid)
        time.sleep(idle_s)
        idle = (_cpu_seconds(agent.pid) - before) / idle_s
        return {"rss_mb": rss, "hwm_mb": _status_kb(agent.pid, "VmHWM") / 1024, "idle_cpu_pct": idle * 100}
    finally:
        agent.close()


def _table(results: dict[str, dict[str, float]]) -> str:
    rows = [
        "| model | raw p50 µs | gRPC p50 µs (overhead) | framed p50 µs (overhead) "
        "| CPU overhead µs gRPC / framed | raw c=16 req/s "
        "| gRPC c=16 | gRPC+MB c=16 | framed c=16 | framed+MB c=16 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        cells = [
            f"{r[k]:.0f} ({r[k.replace('_rps', '_ratio')]:.0%})"
            for k in ("api_c16_rps", "api_mb_c16_rps", "fast_c16_rps", "fast_mb_c16_rps")
        ]
        rows.append(
            f"| {name} | {r['raw_p50_us']:.0f} | {r['api_p50_us']:.0f} ({r['overhead_p50_us']:.0f}) "
            f"| {r['fast_p50_us']:.0f} ({r['fast_overhead_p50_us']:.0f}) "
            f"| {r['cpu_overhead_us']:.0f} / {r['fast_cpu_overhead_us']:.0f} | {r['raw_c16_rps']:.0f} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, help="write all numbers as JSON here")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "edgeloop-bench-minilm")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per throughput run")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle CPU measurement")
    parser.add_argument("--skip-minilm", action="store_true")
    ns = parser.parse_args()
    threads = load_profile("generic-x86").runtime.threads
    artifacts = digits_artifacts() + ([] if ns.skip_minilm else minilm_artifacts(ns.cache))
    work = Path(tempfile.mkdtemp(prefix="edgeloop-bench-"))
    load_before = os.getloadavg()
    floor = grpc_floor(work / "echo")
    results: dict[str, dict[str, float]] = {}
    for art in artifacts:
        n = 2000 if "digits" in art.name else 150
        results[art.name] = bench_model(art, work / art.name.replace(" ", "_"), n=n, duration=ns.duration)
        print(art.name, json.dumps({k: round(v, 3) for k, v in results[art.name].items()}), flush=True)
    footprint = bench_footprint(artifacts[1], work, ns.idle)
    print(_table(results))
    print(
        f"\nagent RSS, digits int8 loaded: {footprint['rss_mb']:.1f} MB (peak {footprint['hwm_mb']:.1f} MB); "
        f"idle CPU over {ns.idle:.0f} s: {footprint['idle_cpu_pct']:.2f}% of a core; "
        f"empty gRPC round trip p50 {floor:.0f} µs; load average {load_before} -> {os.getloadavg()}"
    )
    if ns.out:
        payload = {
            "models": results,
            "footprint": footprint,
            "grpc_floor_p50_us": floor,
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "cpus": os.cpu_count(),
            "threads": threads,
        }
        ns.out.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
