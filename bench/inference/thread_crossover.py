"""Where one intra-op thread beats the profile's two: `session.run` after an idle gap vs model cost.

Reproduce (repo root, ~2 minutes; MiniLM rows need the cached export of bench/inference/run.py):

    nice -n 10 .venv/bin/python -m bench.inference.thread_crossover --reps 5

A served batch-1 request reaches the model after an idle gap, and with 2 intra-op threads (no
spin-waiting, the agent's session options) onnxruntime must wake its pool thread first. This bench
times `session.run` after a 200 µs sleep gap with 1 and 2 threads on models of growing cost:
synthetic 3-layer 3x3 conv stacks (C channels, 28x28, batch 1), the digits CNN and, when cached,
MiniLM-L6; it is what `onnx_backend`'s automatic thread rule was chosen from; the last column is what that
rule picks for the model on this machine (profile threads 2). Cells: median
(min to max) of the per-repetition p50, thread order rotated per repetition.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from agent.inference.onnx_backend import OnnxRuntime
from bench.inference.artifacts import digits_artifacts

GAP_S = 200e-6
CHANNELS = (8, 16, 24, 32, 48, 64)


def _conv_stack(path: Path, channels: int) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(channels)
    nodes, inits, prev = [], [], "x"
    for i, (cin, cout) in enumerate([(1, channels), (channels, channels), (channels, channels)]):
        w = numpy_helper.from_array(rng.normal(0, 0.1, (cout, cin, 3, 3)).astype(np.float32), f"w{i}")
        inits.append(w)
        nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        prev = f"r{i}"
    graph = helper.make_graph(
        nodes,
        "conv_stack",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _p50_after_gap(session: Any, sample: dict[str, Any], n: int) -> float:
    lat = []
    for _ in range(n):
        time.sleep(GAP_S)
        t = time.perf_counter()
        session.run(None, sample)
        lat.append(time.perf_counter() - t)
    return float(np.percentile(lat, 50) * 1e6)


def _models(tmp: Path, minilm_cache: Path) -> list[tuple[str, Path, dict[str, np.ndarray]]]:
    x = np.random.default_rng(0).normal(size=(1, 1, 28, 28)).astype(np.float32)
    models = [(f"conv3x3 x3, C={c}", _conv_stack(tmp / f"conv{c}.onnx", c), {"x": x}) for c in CHANNELS]
    models += [(a.name, a.path, a.sample) for a in digits_artifacts()]
    if (minilm_cache / "minilm_int8.onnx").exists() and (minilm_cache / "minilm_fp32.onnx").exists():
        from bench.inference.artifacts import minilm_artifacts

        models += [(a.name, a.path, a.sample) for a in minilm_artifacts(minilm_cache)]
    return models


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "edgeloop-bench-minilm")
    ns = parser.parse_args()
    print("| model | 2 threads p50 µs | 1 thread p50 µs | 1 / 2 threads | auto rule picks |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, path, sample in _models(Path(tmp), ns.cache):
            sessions = {t: OnnxRuntime(path, threads=t, auto_threads=False)._session for t in (2, 1)}
            n = ns.n if "MiniLM" not in name else max(20, ns.n // 10)
            results: dict[int, list[float]] = {1: [], 2: []}
            for rep in range(ns.reps):
                for threads in (2, 1) if rep % 2 == 0 else (1, 2):
                    _p50_after_gap(sessions[threads], sample, 10)
                    results[threads].append(_p50_after_gap(sessions[threads], sample, n))
            two, one = results[2], results[1]
            ratios = [a / b for a, b in zip(one, two, strict=True)]
            print(
                f"| {name} | {np.median(two):.0f} ({min(two):.0f} to {max(two):.0f}) "
                f"| {np.median(one):.0f} ({min(one):.0f} to {max(one):.0f}) "
                f"| {np.median(ratios):.2f} ({min(ratios):.2f} to {max(ratios):.2f}) "
                f"| {OnnxRuntime(path, threads=2).threads} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
