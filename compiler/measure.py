"""Run artifacts on the target runtime and measure them: outputs, latency, peak memory.

Owns `open_runtime(artifact, runtime, threads)`: the one place that loads an artifact, and it loads
it with the agent's own backends (`agent.inference.onnx_backend`, `agent.inference.tflite_backend`),
so what the compiler measures is exactly what a device runs (same session options, same quantized
I/O handling). Does not judge results (that is `compiler.pipeline`) and does not build artifacts.

An Edge TPU delegate is not available on this host: `edgetpu` profiles run their full-int8 artifact
on the LiteRT CPU kernels, and the returned runner says so in `accelerator`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compiler.data import Dataset
from compiler.errors import InputError, UnsupportedError

RunFn = Callable[[dict[str, np.ndarray]], np.ndarray]


@dataclass(frozen=True)
class Runner:
    """A loaded artifact: `run(inputs) -> first output`, float32 in, float32 out."""

    run: RunFn
    runtime: str
    accelerator: str
    batch_fixed: int | None  # LiteRT artifacts have a static batch (1); ORT ones are dynamic


@dataclass(frozen=True)
class Timing:
    p50_ms: float
    p95_ms: float
    cpu_p50_ms: float
    calls: int
    cpu_p95_ms: float = 0.0


def open_runtime(artifact: Path, runtime: str, threads: int = 1, delegate: str = "xnnpack") -> Runner:
    """Load `artifact` on `runtime` ("onnxruntime" | "litert") with `threads` compute threads.

    Raises:
        InputError: unknown runtime.
        UnsupportedError: the runtime refuses the artifact.
    """
    if runtime == "onnxruntime":
        return _open_ort(artifact, threads)
    if runtime == "litert":
        return _open_litert(artifact, threads, delegate)
    raise InputError(f"unknown runtime {runtime!r} (onnxruntime | litert)")


Inputs = dict[str, np.ndarray] | Dataset


def predict(runner: Runner, inputs: Inputs, batch_size: int = 64) -> np.ndarray:
    """Run every sample through `runner`, in batches (batch 1 for static-shape artifacts).

    A `Dataset` is fed through `Dataset.calls`, so a model with non-batched inputs (a recurrent
    state, a 0-d sample rate) gets one complete feed per sample."""
    step = runner.batch_fixed or batch_size
    if isinstance(inputs, Dataset):
        return np.concatenate([runner.run(feed) for feed in inputs.calls(step)])
    n = len(next(iter(inputs.values())))
    outs = [runner.run({k: v[i : i + step] for k, v in inputs.items()}) for i in range(0, n, step)]
    return np.concatenate(outs)


def batch1_feeds(inputs: Inputs, limit: int = 32) -> list[dict[str, np.ndarray]]:
    """Up to `limit` one-sample feeds (complete feeds for a `Dataset`)."""
    if isinstance(inputs, Dataset):
        return [inputs.batch(i, i + 1) for i in range(min(len(inputs), limit))]
    n = len(next(iter(inputs.values())))
    return [{k: v[i : i + 1] for k, v in inputs.items()} for i in range(min(n, limit))]


def time_batch1(runner: Runner, inputs: Inputs, *, calls: int = 200, warmup: int = 20) -> Timing:
    """p50/p95 wall latency of batch-1 calls (cycling through the samples), plus thread CPU p50/p95.

    Thread CPU time excludes the time the calling thread waited for a core (a loaded build host),
    so with one compute thread it is the number to judge a latency budget by; wall time is kept
    for the report."""
    samples = batch1_feeds(inputs)
    for i in range(warmup):
        runner.run(samples[i % len(samples)])
    wall, cpu = np.empty(calls), np.empty(calls)
    for i in range(calls):
        s = samples[i % len(samples)]
        t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        runner.run(s)
        wall[i], cpu[i] = time.perf_counter_ns() - t0, time.thread_time_ns() - c0
    return Timing(
        float(np.percentile(wall, 50)) / 1e6,
        float(np.percentile(wall, 95)) / 1e6,
        float(np.median(cpu)) / 1e6,
        calls,
        float(np.percentile(cpu, 95)) / 1e6,
    )


def interleaved_cpu(runners: list[Runner], inputs: Inputs, *, rounds: int = 7, calls: int = 30) -> np.ndarray:
    """Median thread CPU ms of batch-1 calls, [round, runner], with the runners taking turns.

    Each round runs every runner `calls` times, in an order rotated per round, so a change in host
    load hits all of them alike and their per-round ratios stay meaningful (paired comparison).
    """
    samples = batch1_feeds(inputs)
    for r in runners:
        for s in samples[:5]:
            r.run(s)
    out = np.empty((rounds, len(runners)))
    for rnd in range(rounds):
        order = [(rnd + j) % len(runners) for j in range(len(runners))]
        for j in order:
            cpu = np.empty(calls)
            for i in range(calls):
                c0 = time.thread_time_ns()
                runners[j].run(samples[i % len(samples)])
                cpu[i] = time.thread_time_ns() - c0
            out[rnd, j] = float(np.median(cpu)) / 1e6
    return out


def peak_memory(artifact: Path, runtime: str, delegate: str = "xnnpack") -> int:
    """Resident-memory peak (bytes) of loading `artifact` and running one batch-1 inference.

    Measured in a fresh child process (`compiler._memprobe`) above its post-import baseline, so
    earlier sessions and allocator reuse in this process do not distort it. Returns -1 when the
    platform has no /proc (non-Linux) or the probe fails.
    """
    cmd = [sys.executable, "-m", "compiler._memprobe", str(artifact), runtime, delegate]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
        return int(done.stdout.strip().splitlines()[-1])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return -1


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def _open_ort(artifact: Path, threads: int) -> Runner:
    from agent.errors import AgentError
    from agent.inference.onnx_backend import CPU_EP, OnnxRuntime

    try:
        rt = OnnxRuntime(artifact, providers=(CPU_EP,), threads=threads)
    except AgentError as err:
        raise UnsupportedError(f"onnxruntime cannot load {artifact.name}: {err}") from err
    return Runner(_first_output(rt), "onnxruntime", "cpu", None)


def _open_litert(artifact: Path, threads: int, delegate: str) -> Runner:
    from agent.errors import AgentError
    from agent.inference.tflite_backend import TfliteRuntime

    try:
        rt = TfliteRuntime(artifact, threads=threads)
    except AgentError as err:
        raise UnsupportedError(f"LiteRT cannot load {artifact.name}: {err}") from err
    accel = "edgetpu absent: LiteRT CPU (XNNPACK)" if delegate == "edgetpu" else f"cpu ({delegate})"
    batch = rt.signature.inputs[0].shape[0] if rt.signature.inputs else None
    return Runner(_first_output(rt), "litert", accel, batch if isinstance(batch, int) and batch > 0 else None)


def _first_output(rt: Any) -> RunFn:
    """The agent's runtime, fed positionally (npz names need not match the graph's) -> output 0."""
    in_names = [t.name for t in rt.signature.inputs]
    out_name = rt.signature.outputs[0].name

    def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
        if set(inputs) == set(in_names):  # by name when the names match (constants come last in a feed)
            feed = {n: inputs[n] for n in in_names}
        else:
            feed = dict(zip(in_names, inputs.values(), strict=True))
        return np.asarray(rt.run(feed)[out_name], dtype=np.float32)

    return run


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
