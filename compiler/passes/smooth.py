"""SmoothQuant-style smoothing of MatMul inputs before dynamic int8 quantization.

Dynamic int8 quantizes each MatMul's activation with one scale per tensor; a few outlier channels
(common in transformer activations) then eat the int8 range of all the others. Smoothing moves that
range into the weights, which are quantized per channel: for `Y = X @ W` with a constant `W[K, N]`,
pick `s_k = max|X_k|^alpha / max|W_k|^(1-alpha)` from calibration data and rewrite
`Y = (X / s) @ (diag(s) W)`. In fp32 this is the same function (Xiao et al., SmoothQuant, 2023).

The division is an explicit `Mul` by `1/s` before each MatMul; when a `LayerNormalization` with
constant scale/bias feeds only smoothed MatMuls sharing one `s`, the factor is folded into it and
costs nothing at run time. Owns only this graph rewrite; quantization is `compiler.passes.quantize`.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from compiler.data import Dataset
from compiler.errors import UnsupportedError


def smooth_matmuls(
    fp32: Path,
    out: Path,
    calib: Dataset,
    *,
    alpha: float = 0.5,
    min_outlier_ratio: float = 0.0,
    samples: int = 32,
) -> Path:
    """Write a smoothed copy of `fp32` to `out` (same function, friendlier to per-tensor int8).

    Only inputs whose channel ranges are uneven (max / median of per-channel |x| max at least
    `min_outlier_ratio`) are smoothed: elsewhere per-tensor int8 is already fine and an unfoldable
    `Mul` would only cost time.

    Raises:
        UnsupportedError: the model has no MatMul with a constant weight (nothing to smooth).
    """
    import onnx
    from onnx import numpy_helper

    from compiler.passes.quantize import intermediates

    proto = onnx.load(str(fp32))
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    targets = [
        n
        for n in graph.node
        if n.op_type == "MatMul"
        and n.input[1] in inits
        and numpy_helper.to_array(inits[n.input[1]]).ndim == 2
    ]
    if not targets:
        raise UnsupportedError("smoothing needs MatMul nodes with constant 2-D weights; none found")
    acts = intermediates(fp32, {n.input[0] for n in targets}, calib.head(samples))
    by_input: dict[str, list[Any]] = defaultdict(list)
    for n in targets:
        if n.input[0] in acts:
            by_input[n.input[0]].append(n)
    for x_name, nodes in by_input.items():
        a_max = np.abs(acts[x_name].reshape(-1, acts[x_name].shape[-1])).max(axis=0)
        if a_max.max() < min_outlier_ratio * max(float(np.median(a_max)), 1e-12):
            continue
        _smooth_group(graph, inits, x_name, nodes=nodes, x=acts[x_name], alpha=alpha)
    onnx.save(proto, str(out))
    return out


def _smooth_group(
    graph: Any, inits: dict[str, Any], x_name: str, *, nodes: list[Any], x: np.ndarray, alpha: float
) -> None:
    from onnx import numpy_helper

    a_max = np.abs(x.reshape(-1, x.shape[-1])).max(axis=0).astype(np.float64)
    weights = [numpy_helper.to_array(inits[n.input[1]]).astype(np.float64) for n in nodes]
    w_max = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
    s = np.clip(a_max, 1e-5, None) ** alpha / np.clip(w_max, 1e-5, None) ** (1 - alpha)
    s = np.clip(s, 1e-2, 1e2)
    for n, w in zip(nodes, weights, strict=True):
        inits[n.input[1]].CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(np.float32), n.input[1]))
    inv = 1.0 / s
    consumers = [n for n in graph.node if x_name in n.input]
    only_smoothed = len(consumers) == len(nodes)
    if not (
        only_smoothed
        and (_fold_into_layernorm(graph, inits, x_name, inv) or _fold_into_mul(graph, inits, x_name, inv))
    ):
        _insert_mul(graph, x_name, nodes, inv.astype(np.float32))


def _fold_into_layernorm(graph: Any, inits: dict[str, Any], x_name: str, inv: np.ndarray) -> bool:
    from onnx import numpy_helper

    producer = next((n for n in graph.node if x_name in n.output), None)
    if producer is None or producer.op_type != "LayerNormalization":
        return False
    if len(producer.input) < 3 or not all(i in inits for i in producer.input[1:3]):
        return False
    for name in producer.input[1:3]:
        val = numpy_helper.to_array(inits[name]).astype(np.float64) * inv
        inits[name].CopyFrom(numpy_helper.from_array(val.astype(np.float32), name))
    return True


def _fold_into_mul(graph: Any, inits: dict[str, Any], x_name: str, inv: np.ndarray, depth: int = 0) -> bool:
    """X = A * B * ... with a constant factor somewhere in a chain of single-use Muls (e.g. GELU's 0.5):
    scale a private copy of that constant by `inv` per channel."""
    from onnx import numpy_helper

    producer = next((n for n in graph.node if x_name in n.output), None)
    if producer is None or producer.op_type != "Mul" or depth > 2:
        return False
    for k, name in enumerate(producer.input):
        if name in inits:
            const = numpy_helper.to_array(inits[name]).astype(np.float64)
            if const.ndim > 1 or const.size not in (1, inv.size):
                continue
            new_name = f"{name}_smooth_{x_name}"
            folded = numpy_helper.from_array((const * inv).astype(np.float32), new_name)
            graph.initializer.append(folded)
            inits[new_name] = folded
            producer.input[k] = new_name
            return True
    for name in producer.input:
        if sum(name in n.input for n in graph.node) == 1 and _fold_into_mul(
            graph, inits, name, inv, depth + 1
        ):
            return True
    return False


def _insert_mul(graph: Any, x_name: str, nodes: list[Any], inv: np.ndarray) -> None:
    from onnx import helper, numpy_helper

    scale_name, out_name = f"{x_name}_smooth_scale", f"{x_name}_smoothed"
    graph.initializer.append(numpy_helper.from_array(inv, scale_name))
    position = min(i for i, n in enumerate(graph.node) if n in nodes)
    graph.node.insert(
        position, helper.make_node("Mul", [x_name, scale_name], [out_name], name=f"{x_name}_smooth")
    )
    for n in nodes:
        n.input[0] = out_name
