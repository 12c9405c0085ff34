"""`bench`: latency and throughput of one artifact on a runtime, with the device-profile settings.

Owns the numbers the `bench` subcommand prints: p50/p95 batch-1 latency on one thread, batch-N
throughput (ONNX artifacts; LiteRT artifacts have a static batch of 1, so they run N calls), size.
A model with non-batched inputs (a recurrent state, a 0-d scalar: `compiler.data`) is fed one
sample per call with its own per-call values, so its throughput is N sequential calls (`batch` says
1). Does not compare artifacts (the benchmark script in bench/compiler does that with paired rounds).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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
        data = check_against(data, onnx_input_specs(path), "bench", batched=_batched(path))
    one = measure.open_runtime(path, runtime, 1)
    runner = measure.open_runtime(path, runtime, threads)
    if data.stateful:
        timing = _time_calls(one, data, calls=calls)
        n, feeds = min(batch, len(data)), list(data.calls())[: min(batch, len(data))]
        rounds = max(3, calls // 10)
        t0 = time.perf_counter()
        for _ in range(rounds):
            for feed in feeds:
                runner.run(feed)
        per_s, batch_used = rounds * n / (time.perf_counter() - t0), 1
    else:
        timing = measure.time_batch1(one, data.inputs, calls=calls)
        n = min(batch, len(data))
        chunk = data.batch(0, n)
        measure.predict(runner, chunk, batch_size=n)
        rounds = max(3, calls // 10)
        t0 = time.perf_counter()
        for _ in range(rounds):
            measure.predict(runner, chunk, batch_size=n)
        per_s, batch_used = rounds * n / (time.perf_counter() - t0), n
    return BenchResult(
        str(path),
        runtime,
        path.stat().st_size,
        timing.p50_ms,
        timing.p95_ms,
        timing.cpu_p50_ms,
        per_s,
        batch_used,
        threads,
    )


def _batched(path: Path) -> frozenset[str] | None:
    """The inputs the agent's runtime batches (the model's metadata override included)."""
    try:
        from agent.inference.onnx_backend import OnnxRuntime

        return frozenset(OnnxRuntime(path).signature.batched_inputs)
    except Exception:  # the runtime's own refusal is reported by open_runtime below
        return None


def _time_calls(runner: measure.Runner, data: Dataset, *, calls: int, warmup: int = 20) -> measure.Timing:
    """p50/p95 wall and thread-CPU latency of one-sample calls of a stateful dataset."""
    feeds = [data.batch(i, i + 1) for i in range(min(len(data), 32))]
    for i in range(warmup):
        runner.run(feeds[i % len(feeds)])
    wall, cpu = np.empty(calls), np.empty(calls)
    for i in range(calls):
        t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        runner.run(feeds[i % len(feeds)])
        wall[i], cpu[i] = time.perf_counter_ns() - t0, time.thread_time_ns() - c0
    return measure.Timing(
        float(np.percentile(wall, 50)) / 1e6,
        float(np.percentile(wall, 95)) / 1e6,
        float(np.median(cpu)) / 1e6,
        calls,
    )
