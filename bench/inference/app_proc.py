"""The app's process for the inference benchmark: raw session, LocalModel and both socket clients.

Usage: python -m bench.inference.app_proc ARTIFACT SAMPLE.npz SLOTS SOCKET FAST_SOCKET
Holds, in one process: two raw onnxruntime sessions built through the agent's own adapter
(identical session options; "raw" with the profile's intra-op threads, "raw1" with one thread, both
pinned: "raw1" is the fair baseline for a model the agent's automatic rule serves on one thread),
`LocalModel` on the agent's slots (in-process mode), and `EdgeloopClient` over the framed socket
and over gRPC. Prints ``READY {"agent": backend, "local": backend}`` (the backend strings say the
intra-op threads each chose). So every latency is measured in the same process as raw `session.run`.
Reads one JSON command per stdin line and answers one JSON line:
    {"op": "lat", "mode": "raw|raw1|local|framed|grpc", "n": N}  -> p50_us, p95_us, cpu_us (per call)
    {"op": "thr", "mode": "raw|local|local_gated", "duration": S}  -> rps, 16 threads in this process
("local_gated": LocalModel with max_concurrent = the profile's threads, like the agent's workers.)
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from agent.client import EdgeloopClient
from agent.inference.onnx_backend import OnnxRuntime
from agent.local import LocalModel
from agent.profile import load_profile

CONCURRENCY = 16


def _latency(call: Callable[[], Any], n: int) -> dict[str, float]:
    for _ in range(max(5, n // 20)):
        call()
    lat = []
    cpu = time.process_time()
    for _ in range(n):
        t = time.perf_counter()
        call()
        lat.append(time.perf_counter() - t)
    return {
        "p50_us": float(np.percentile(lat, 50) * 1e6),
        "p95_us": float(np.percentile(lat, 95) * 1e6),
        "cpu_us": (time.process_time() - cpu) / n * 1e6,
    }


def _throughput(call: Callable[[], Any], duration: float) -> dict[str, float]:
    counts = [0] * CONCURRENCY
    stop = time.perf_counter() + duration

    def worker(k: int) -> None:
        while time.perf_counter() < stop:
            call()
            counts[k] += 1

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(CONCURRENCY)]
    start = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return {"rps": sum(counts) / (time.perf_counter() - start)}


def main() -> None:
    artifact, sample_path, slots, sock, fast = (Path(a) for a in sys.argv[1:6])
    sample = dict(np.load(sample_path))
    profile = load_profile("generic-x86")
    session = OnnxRuntime(artifact, threads=profile.runtime.threads, auto_threads=False)._session
    session1 = OnnxRuntime(artifact, threads=1, auto_threads=False)._session
    local = LocalModel(slots, profile=profile)
    gated = LocalModel(slots, profile=profile, max_concurrent=profile.runtime.threads)
    framed = EdgeloopClient(sock, fast_socket=fast)
    grpc_client = EdgeloopClient(sock)
    calls: dict[str, Callable[[], Any]] = {
        "raw": lambda: session.run(None, sample),
        "raw1": lambda: session1.run(None, sample),
        "local": lambda: local.predict_full(sample),
        "local_gated": lambda: gated.predict_full(sample),
        "framed": lambda: framed.predict_full(sample),
        "grpc": lambda: grpc_client.predict_full(sample),
    }
    for call in calls.values():
        call()
    local_handle = local._holder.current
    backends = {
        "agent": grpc_client.model_info().backend,
        "local": local_handle.runtime.backend if local_handle is not None else "none",
    }
    print("READY " + json.dumps(backends), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        call = calls[cmd["mode"]]
        out = _latency(call, cmd["n"]) if cmd["op"] == "lat" else _throughput(call, cmd["duration"])
        print(json.dumps(out), flush=True)
    local.close()
    gated.close()
    framed.close()
    grpc_client.close()


if __name__ == "__main__":
    main()
