"""Agent inference benchmark: raw `session.run` vs in-process `LocalModel`, framed v2 and gRPC.

Reproduce (from the repo root, ~15 minutes on 2 cores with 5 repetitions):

    HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python -m bench.inference.run --out /tmp/inference-bench.json

For each model (digits CNN fp32 and int8 QDQ, MiniLM-L6 int8 and fp32, all ONNX, batch 1), one agent
process (and a second one with micro-batching) serves the artifact, and one *app* process
(`app_proc.py`) holds raw onnxruntime sessions built with the agent's session options (the profile's
intra-op threads, and one thread), a `LocalModel` on the agent's slots, and `EdgeloopClient`s over
the framed v2 socket and gRPC:
  * batch-1 p50/p95 of each, all measured in the app's process, so "added p50" is over raw
    `session.run` in the same process, against both raw sessions (the agent and LocalModel serve a
    cheap model on one thread, see `onnx_backend`; the threads each chose are printed);
    CPU overhead = app CPU + agent CPU per call - raw CPU (profile's threads);
  * c=16 throughput: 16 raw threads and 16 LocalModel threads in the app's process; 16 API clients
    (4 processes x 4 threads) over framed v2 and gRPC, without and with micro-batching (MB).
Every repetition runs every mode, in an order rotated per repetition (interleaved), and each ratio
is taken against the raw run of the same repetition; tables give median (min-max) over repetitions.
Then the agent process's RSS with the digits int8 model loaded and its idle CPU over 10 s.
Everything runs on the same machine: at c=16 the client processes compete with the agent for the cores.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
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
    socket: str,
    sample: dict[str, np.ndarray],
    threads: int,
    duration: float,
    framed: bool,
    barrier: Any,
    results: Any,
) -> None:
    from agent.client import EdgeloopClient

    fast = Path(socket).with_suffix(".fast") if framed else None
    clients = [EdgeloopClient(Path(socket), fast_socket=fast) for _ in range(threads)]
    for c in clients:
        c.predict(sample)
    barrier.wait()  # every client process connected and warm: the windows start together
    counts = [0] * threads
    stop = time.time() + duration

    def worker(k: int) -> None:
        while time.time() < stop:
            clients[k].predict(sample)
            counts[k] += 1

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    results.put(sum(counts))


def _api_throughput(
    socket: Path, sample: dict[str, np.ndarray], duration: float, framed: bool = False
) -> float:
    """16 clients (4 spawned processes x 4 threads); the window opens once all are connected."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(CLIENT_PROCS + 1)
    results = ctx.Queue()
    per_proc = CONCURRENCY // CLIENT_PROCS
    args = (str(socket), sample, per_proc, duration, framed, barrier, results)
    procs = [ctx.Process(target=_client_proc, args=args) for _ in range(CLIENT_PROCS)]
    for proc in procs:
        proc.start()
    barrier.wait(timeout=300)  # spawned interpreters import slowly on a loaded box
    total = sum(results.get(timeout=300) for _ in procs)
    for proc in procs:
        proc.join(30)
    return float(total) / duration


class Agent:
    """A separate agent process serving one artifact (bench/inference/agent_proc.py)."""

    def __init__(self, artifact: Path, work: Path, *extra: str, cwd: Path | None = None) -> None:
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
        self.proc = subprocess.Popen(
            [*cmd, *extra], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=cwd
        )
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


class App:
    """The app's process (bench/inference/app_proc.py): raw session, LocalModel, framed and gRPC clients."""

    def __init__(self, art: Artifact, sample: Path, agent: Agent, *, cwd: Path | None = None) -> None:
        slots = agent.socket.parent / "slots"
        fast = agent.socket.with_suffix(".fast")
        cmd = [sys.executable, "-m", "bench.inference.app_proc", str(art.path), str(sample), str(slots)]
        self.proc = subprocess.Popen(
            [*cmd, str(agent.socket), str(fast)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=cwd,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"app did not start: {line!r}")
        self.backends: dict[str, str] = json.loads(line.removeprefix("READY").strip() or "{}")

    def ask(self, **cmd: Any) -> dict[str, float]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        answer: dict[str, float] = json.loads(self.proc.stdout.readline())
        return answer

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


LAT_MODES = ("raw", "raw1", "local", "framed", "grpc")
THR_MODES = ("raw", "local", "framed", "framed_mb", "grpc", "grpc_mb")


def _rotated(modes: tuple[str, ...], rep: int) -> list[str]:
    k = rep % len(modes)
    return list(modes[k:] + modes[:k])


def bench_model(art: Artifact, work: Path, *, n: int, duration: float, reps: int) -> dict[str, Any]:
    """`reps` interleaved repetitions (mode order rotated each time) of every latency and throughput."""
    work.mkdir(parents=True, exist_ok=True)
    sample = work / "sample.npz"
    np.savez(sample, **art.sample)  # type: ignore[arg-type]
    plain = Agent(art.path, work / "plain")
    batched = Agent(art.path, work / "batched", "--micro-batch", "--max-batch", "32")
    app = App(art, sample, plain)
    print(f"  {art.name}: {app.backends}", flush=True)
    runs: dict[str, list[float]] = {}
    try:
        for rep in range(reps):
            lat: dict[str, dict[str, float]] = {}
            for mode in _rotated(LAT_MODES, rep):
                before = _cpu_seconds(plain.pid)
                lat[mode] = app.ask(op="lat", mode=mode, n=n)
                lat[mode]["agent_cpu_us"] = (_cpu_seconds(plain.pid) - before) / (n + max(5, n // 20)) * 1e6
            thr: dict[str, float] = {}
            for mode in _rotated(THR_MODES, rep):
                if mode in ("raw", "local"):
                    thr[mode] = app.ask(op="thr", mode=mode, duration=duration)["rps"]
                else:
                    agent = batched if mode.endswith("_mb") else plain
                    thr[mode] = _api_throughput(
                        agent.socket, art.sample, duration, framed=mode.startswith("framed")
                    )
            raw = lat["raw"]
            for mode in LAT_MODES:
                runs.setdefault(f"{mode}_p50_us", []).append(lat[mode]["p50_us"])
                runs.setdefault(f"{mode}_p95_us", []).append(lat[mode]["p95_us"])
                if mode not in ("raw", "raw1"):
                    runs.setdefault(f"{mode}_added_p50_us", []).append(lat[mode]["p50_us"] - raw["p50_us"])
                    added1 = lat[mode]["p50_us"] - lat["raw1"]["p50_us"]
                    runs.setdefault(f"{mode}_added1_p50_us", []).append(added1)
                    cpu = lat[mode]["cpu_us"] + lat[mode]["agent_cpu_us"] - raw["cpu_us"]
                    runs.setdefault(f"{mode}_cpu_overhead_us", []).append(cpu)
            for mode in THR_MODES:
                runs.setdefault(f"{mode}_c16_rps", []).append(thr[mode])
                if mode != "raw":
                    runs.setdefault(f"{mode}_c16_ratio", []).append(thr[mode] / thr["raw"])
            print(
                f"  {art.name} rep {rep + 1}/{reps}: "
                + json.dumps({k: round(v[-1], 2) for k, v in runs.items()}),
                flush=True,
            )
    finally:
        app.close()
        plain.close()
        batched.close()
    median = {k: float(np.median(v)) for k, v in runs.items()}
    return {"runs": runs, "median": median, "backends": app.backends}


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


def ipc_floor(n: int = 5000) -> float:
    """p50 µs of a 16-byte round trip over a Unix socket to another process that only echoes.

    The floor under any socket path on this machine: two wake-ups across processes. On a VM whose
    vCPUs halt when idle, each wake-up of a thread on another vCPU is an inter-processor interrupt
    through the hypervisor, which can cost tens of µs; on bare metal it is a few µs.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # the echo process
        ours.close()
        while data := theirs.recv(64):
            theirs.sendall(data)
        os._exit(0)
    theirs.close()
    try:
        msg = b"x" * 16

        def round_trip() -> None:
            ours.sendall(msg)
            ours.recv(64)

        return float(np.percentile(_latencies(round_trip, n), 50) * 1e6)
    finally:
        ours.close()
        os.waitpid(pid, 0)


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


def _cell(r: dict[str, Any], key: str, fmt: str = "{:.0f}") -> str:
    values = r["runs"][key]
    return f"{fmt.format(float(np.median(values)))} ({fmt.format(min(values))} to {fmt.format(max(values))})"


def _pct(r: dict[str, Any], key: str) -> str:
    values = r["runs"][key]
    return f"{np.median(values):.0%} ({min(values):.0%} to {max(values):.0%})"


def _table(results: dict[str, dict[str, Any]]) -> str:
    rows = [
        "| model | agent / in-process backend | raw p50 µs: profile threads / 1 thread "
        "| added p50 µs over raw (profile threads): in-process | framed v2 | gRPC "
        "| added p50 µs over raw (1 thread): in-process | framed v2 | gRPC "
        "| CPU overhead µs/call: in-process / framed / gRPC |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        cpu = " / ".join(_cell(r, f"{m}_cpu_overhead_us") for m in ("local", "framed", "grpc"))
        threads = " / ".join(r["backends"][k].rsplit(" ", 1)[-1] for k in ("agent", "local"))
        added = " | ".join(
            _cell(r, f"{m}_{key}_p50_us", "{:.1f}" if m == "local" else "{:.0f}")
            for key in ("added", "added1")
            for m in ("local", "framed", "grpc")
        )
        rows.append(
            f"| {name} | {threads} | {_cell(r, 'raw_p50_us')} / {_cell(r, 'raw1_p50_us')} | {added} | {cpu} |"
        )
    rows += [
        "",
        "| model | raw c=16 req/s | in-process c=16 | framed v2 c=16 | framed v2 + MB c=16 "
        "| gRPC c=16 | gRPC + MB c=16 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        cells = [_pct(r, f"{m}_c16_ratio") for m in THR_MODES[1:]]
        rows.append(f"| {name} | {_cell(r, 'raw_c16_rps')} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, help="write all numbers as JSON here")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "edgeloop-bench-minilm")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per throughput run")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle CPU measurement")
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions per model")
    ns = parser.parse_args()
    threads = load_profile("generic-x86").runtime.threads
    artifacts = digits_artifacts() + ([] if ns.skip_minilm else minilm_artifacts(ns.cache))
    work = Path(tempfile.mkdtemp(prefix="edgeloop-bench-"))
    load_before = os.getloadavg()
    floor = grpc_floor(work / "echo")
    ipc_before = ipc_floor()
    results: dict[str, dict[str, Any]] = {}
    for art in artifacts:
        n = 2000 if "digits" in art.name else 150
        results[art.name] = bench_model(
            art, work / art.name.replace(" ", "_"), n=n, duration=ns.duration, reps=ns.reps
        )
    footprint = bench_footprint(artifacts[1], work, ns.idle)
    ipc = [ipc_before, ipc_floor()]
    print(_table(results))
    print(
        f"\nagent RSS, digits int8 loaded: {footprint['rss_mb']:.1f} MB (peak {footprint['hwm_mb']:.1f} MB); "
        f"idle CPU over {ns.idle:.0f} s: {footprint['idle_cpu_pct']:.2f}% of a core; "
        f"empty gRPC round trip p50 {floor:.0f} µs; bare Unix-socket round trip to another process "
        f"p50 {ipc[0]:.0f} / {ipc[1]:.0f} µs (before / after); load avg {load_before} -> {os.getloadavg()}"
    )
    if ns.out:
        payload = {
            "models": results,
            "footprint": footprint,
            "grpc_floor_p50_us": floor,
            "ipc_floor_p50_us": ipc,
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "cpus": os.cpu_count(),
            "threads": threads,
        }
        ns.out.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
