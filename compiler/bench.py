"""`bench`: latency and throughput of one artifact on a runtime, with the device-profile settings.

Owns the numbers the `bench` subcommand prints: p50/p95 batch-1 latency on one thread, batch-N
throughput (ONNX artifacts; LiteRT artifacts have a static batch of 1, so they run N calls), size.
Does not compare artifacts (the benchmark script in bench/compiler does that with paired rounds).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from compiler import measure
from compiler.data import Dataset, check_against
from compiler.passes.export import onnx_input_specs


@dataclass(frozen=True)
class BenchResult:
    path: str
    runtime: str
    size_bytes: int
    latency_p50_ms: float
    latency_p95_ms: float
    cpu_p50_ms: float
    throughput_per_s: float
    batch: int
    threads: int


def bench_artifact(
    path: Path,
    data: Dataset,
    *,
    runtime: str | None = None,
    threads: int = 1,
    batch: int = 32,
    calls: int = 300,
) -> BenchResult:
    """Measure one artifact; `runtime` defaults from the file suffix.

    Raises:
        InputError: data that does not fit the model, or an unknown runtime.
        UnsupportedError: the runtime cannot load the artifact.
    """
    runtime = runtime or ("onnxruntime" if path.suffix == ".onnx" else "litert")
    if path.suffix == ".onnx":
        data = check_against(data, onnx_input_specs(path), "bench")
    one = measure.open_runtime(path, runtime, 1)
    timing = measure.time_batch1(one, data.inputs, calls=calls)
    runner = measure.open_runtime(path, runtime, threads)
    n = min(batch, len(data))
    chunk = data.batch(0, n)
    measure.predict(runner, chunk, batch_size=n)
    rounds = max(3, calls // 10)
    t0 = time.perf_counter()
    for _ in range(rounds):
        measure.predict(runner, chunk, batch_size=n)
    per_s = rounds * n / (time.perf_counter() - t0)
    return BenchResult(
        str(path),
        runtime,
        path.stat().st_size,
        timing.p50_ms,
        timing.p95_ms,
        timing.cpu_p50_ms,
        per_s,
        n,
        threads,
    )
