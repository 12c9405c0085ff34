"""Raw in-process baseline for the benchmark, in a clean process (numpy + onnxruntime only).

Usage: python -m bench.inference.raw_proc ARTIFACT SAMPLE.npz N DURATION
Builds the session through the agent's own onnxruntime adapter (identical session options), then
calls `InferenceSession.run` directly: p50/p95 (and process CPU) of N batch-1 calls, and the
throughput of 16 threads for DURATION seconds. Prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

from agent.inference.onnx_backend import OnnxRuntime
from agent.profile import load_profile

CONCURRENCY = 16


def main() -> None:
    artifact, sample_path, n, duration = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    sample = dict(np.load(sample_path))
    threads = load_profile("generic-x86").runtime.threads
    session = OnnxRuntime(artifact, threads=threads)._session
    for _ in range(max(5, n // 20)):
        session.run(None, sample)
    lat = []
    cpu_before = time.process_time()
    for _ in range(n):
        t = time.perf_counter()
        session.run(None, sample)
        lat.append(time.perf_counter() - t)
    cpu_per_call = (time.process_time() - cpu_before) / n
    counts = [0] * CONCURRENCY
    stop = time.perf_counter() + duration

    def worker(k: int) -> None:
        while time.perf_counter() < stop:
            session.run(None, sample)
            counts[k] += 1

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(CONCURRENCY)]
    start = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    result = {
        "raw_p50_us": float(np.percentile(lat, 50) * 1e6),
        "raw_p95_us": float(np.percentile(lat, 95) * 1e6),
        "raw_cpu_us_per_call": cpu_per_call * 1e6,
        "raw_c16_rps": sum(counts) / (time.perf_counter() - start),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
