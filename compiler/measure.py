"""Run artifacts on the target runtime and measure them: outputs, latency, peak memory.

Owns `open_runtime(artifact, runtime, threads)`: the one place that builds an onnxruntime session or a
LiteRT interpreter with the settings a device profile implies (N threads, XNNPACK for LiteRT,
sequential ORT execution, full graph optimisation). When `agent.inference` lands, switch this one
function to it. Does not judge results (that is `compiler.pipeline`) and does not build artifacts.

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


def predict(runner: Runner, inputs: dict[str, np.ndarray], batch_size: int = 64) -> np.ndarray:
    """Run every sample through `runner`, in batches (batch 1 for static-shape artifacts)."""
    n = len(next(iter(inputs.values())))
    step = runner.batch_fixed or batch_size
    outs = [runner.run({k: v[i : i + step] for k, v in inputs.items()}) for i in range(0, n, step)]
    return np.concatenate(outs)


def time_batch1(
    runner: Runner, inputs: dict[str, np.ndarray], *, calls: int = 200, warmup: int = 20
) -> Timing:
    """p50/p95 wall latency of batch-1 calls (cycling through the samples), plus median thread CPU."""
    n = len(next(iter(inputs.values())))
    samples = [{k: v[i % n : i % n + 1] for k, v in inputs.items()} for i in range(min(n, 32))]
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
    )


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
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        sess = ort.InferenceSession(str(artifact), opts, providers=["CPUExecutionProvider"])
    except Exception as err:
        raise UnsupportedError(f"onnxruntime cannot load {artifact.name}: {err}") from err
    out_name = sess.get_outputs()[0].name

    def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(sess.run([out_name], inputs)[0])

    return Runner(run, "onnxruntime", "cpu", None)


def _open_litert(artifact: Path, threads: int, delegate: str) -> Runner:
    from ai_edge_litert import interpreter as lrt

    resolver = (
        lrt.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        if delegate == "none"
        else lrt.OpResolverType.AUTO
    )
    try:
        it = lrt.Interpreter(str(artifact), num_threads=threads, experimental_op_resolver_type=resolver)
        it.allocate_tensors()
    except Exception as err:
        raise UnsupportedError(f"LiteRT cannot load {artifact.name}: {err}") from err
    ins, out = it.get_input_details(), it.get_output_details()[0]
    accel = "edgetpu absent: LiteRT CPU (XNNPACK)" if delegate == "edgetpu" else f"cpu ({delegate})"

    def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
        for detail, arr in zip(ins, inputs.values(), strict=True):
            it.set_tensor(detail["index"], _to_input(arr, detail))
        it.invoke()
        return _from_output(it.get_tensor(out["index"]), out)

    return Runner(run, "litert", accel, int(ins[0]["shape"][0]))


def _qparams(detail: dict[str, Any]) -> tuple[float, int]:
    scale, zero = detail["quantization"]
    return float(scale), int(zero)


def _to_input(arr: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    scale, zero = _qparams(detail)
    if dtype.kind == "i" and scale:
        info = np.iinfo(dtype)
        q: np.ndarray = np.clip(np.round(arr / scale) + zero, info.min, info.max).astype(dtype)
        return q
    return arr.astype(dtype, copy=False)


def _from_output(arr: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero = _qparams(detail)
    if np.dtype(arr.dtype).kind == "i" and scale:
        deq: np.ndarray = ((arr.astype(np.float32) - zero) * scale).astype(np.float32)
        return deq
    return arr.astype(np.float32, copy=False)


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
