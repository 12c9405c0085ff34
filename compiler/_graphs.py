"""Walking ONNX graphs with their control-flow bodies (`If` branches, `Loop`/`Scan` bodies).

Owns the one recursive walk the compiler uses wherever it counts or rewrites nodes and weights, so
`inspect`, the quantization report and the constant lifting before quantization all see the weights
that sit inside subgraphs (a streaming model's `If` on the sample rate, a decoder's `Loop`). Pure
functions over `onnx` protos; does not load or save files.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

# Weighted ops: their weight input index, for counting float vs quantized weights.
WEIGHT_INPUT = {
    "Conv": 1,
    "ConvTranspose": 1,
    "MatMul": 1,
    "Gemm": 1,
    "Gather": 0,
    "LSTM": 1,
    "GRU": 1,
    "RNN": 1,
}
QUANTIZED_OPS = frozenset(
    {
        "ConvInteger",
        "MatMulInteger",
        "QLinearConv",
        "QLinearMatMul",
        "DynamicQuantizeMatMul",
        "DynamicQuantizeLSTM",
        "MatMulNBits",
        "QGemm",
        "QAttention",
    }
)
FLOAT_TYPES = frozenset({1, 10, 11, 16})  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


@dataclass(frozen=True)
class Scope:
    """One graph of a model: the top level (`path` "") or a body, e.g. `gate/then_branch`."""

    graph: Any  # onnx.GraphProto
    path: str
    depth: int


def walk(graph: Any, path: str = "", depth: int = 0) -> Iterator[Scope]:
    """The graph itself, then every subgraph held by a node attribute, depth first."""
    yield Scope(graph, path, depth)
    for node in graph.node:
        for attr in node.attribute:
            subs = [attr.g] if attr.HasField("g") else list(attr.graphs)
            for i, sub in enumerate(subs):
                name = attr.name if len(subs) == 1 else f"{attr.name}[{i}]"
                prefix = f"{path}/" if path else ""
                yield from walk(sub, f"{prefix}{node.name or node.op_type}/{name}", depth + 1)


def constant_tensors(graph: Any) -> dict[str, Any]:
    """Tensors a graph holds itself: its initializers and the `value` of its Constant nodes."""
    out = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.HasField("t"):
                    out[node.output[0]] = attr.t
    return out


def tensor_size(tensor: Any) -> int:
    return int(np.prod(tensor.dims)) if len(tensor.dims) else 1


def lift_constants(model: Any) -> int:
    """Turn float weight Constant nodes (>= 2-d) into initializers of their own graph, in place.

    onnxruntime's quantizer only quantizes initializers; exporters often emit the weights inside
    `If`/`Loop` bodies as Constant nodes, which it then leaves in float. Returns how many were lifted.
    """
    lifted = 0
    for scope in walk(model.graph):
        keep = []
        for node in scope.graph.node:
            tensor = _weight_constant(node)
            if tensor is None:
                keep.append(node)
                continue
            init = scope.graph.initializer.add()
            init.CopyFrom(tensor)
            init.name = node.output[0]
            lifted += 1
        if len(keep) != len(scope.graph.node):
            del scope.graph.node[:]
            scope.graph.node.extend(keep)
    return lifted


def _weight_constant(node: Any) -> Any:
    if node.op_type != "Constant" or len(node.attribute) != 1:
        return None
    attr = node.attribute[0]
    if attr.name != "value" or not attr.HasField("t"):
        return None
    t = attr.t
    return t if t.data_type in FLOAT_TYPES and len(t.dims) >= 2 else None
