"""`inspect`: what is inside an artifact: op counts, parameters, MACs per sample, size on disk.

Owns static analysis of `.onnx` (shape inference at batch 1) and `.tflite` (LiteRT's op list). MACs
count the weighted ops only (Conv, MatMul/Gemm, FullyConnected and their quantized forms); elementwise
work is left out. Does not run the model.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compiler.errors import InputError

# op -> (activation input index, weight input index)
_ONNX_CONV = {"Conv": (0, 1), "ConvInteger": (0, 1), "QLinearConv": (0, 3)}
_ONNX_MATMUL = {
    "MatMul": (0, 1),
    "Gemm": (0, 1),
    "MatMulInteger": (0, 1),
    "QLinearMatMul": (0, 3),
    "DynamicQuantizeMatMul": (0, 1),
    "MatMulNBits": (0, 1),
}


@dataclass(frozen=True)
class Inspection:
    path: str
    format: str
    size_bytes: int
    params: int
    macs: int
    ops: dict[str, int] = field(default_factory=dict)
    inputs: dict[str, list[int | str]] = field(default_factory=dict)


def inspect_model(path: Path) -> Inspection:
    """Inspect an `.onnx` or `.tflite` file.

    Raises:
        InputError: missing file, unknown format, or a file the parser rejects.
    """
    if not path.is_file():
        raise InputError(f"model file not found: {path}")
    try:
        if path.suffix == ".onnx":
            return _inspect_onnx(path)
        if path.suffix == ".tflite":
            return _inspect_tflite(path)
    except InputError:
        raise
    except Exception as err:
        raise InputError(f"cannot inspect {path}: {type(err).__name__}: {err}") from err
    raise InputError(f"{path}: expected .onnx or .tflite")


def _inspect_onnx(path: Path) -> Inspection:
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    inputs = {
        i.name: [
            d.dim_value if d.HasField("dim_value") else d.dim_param for d in i.type.tensor_type.shape.dim
        ]
        for i in graph.input
        if i.name not in inits
    }
    for i in graph.input:
        for d in i.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                d.dim_value = 1  # batch (and any other symbolic dim) = 1 for per-sample MACs
    shapes = _onnx_shapes(onnx.shape_inference.infer_shapes(proto))
    shapes.update({k: list(numpy_helper.to_array(v).shape) for k, v in inits.items()})
    macs = sum(_onnx_macs(n, shapes) for n in graph.node)
    params = sum(
        math.prod(v.dims) for v in inits.values() if v.data_type != onnx.TensorProto.INT64
    )  # not shapes
    ops = Counter(n.op_type for n in graph.node)
    return Inspection(str(path), "onnx", path.stat().st_size, params, macs, dict(ops), inputs)


def _onnx_shapes(proto: Any) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for vi in list(proto.graph.value_info) + list(proto.graph.output) + list(proto.graph.input):
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        if dims and all(dims):
            out[vi.name] = dims
    return out


def _onnx_macs(node: Any, shapes: dict[str, list[int]]) -> int:
    out = shapes.get(node.output[0]) if node.output else None
    if out is None:
        return 0
    if node.op_type in _ONNX_CONV:
        w = shapes.get(node.input[_ONNX_CONV[node.op_type][1]])
        return math.prod(out) * math.prod(w[1:]) if w else 0
    if node.op_type in _ONNX_MATMUL:
        a = shapes.get(node.input[_ONNX_MATMUL[node.op_type][0]])
        return math.prod(out) * a[-1] if a else 0
    return 0


def _inspect_tflite(path: Path) -> Inspection:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(str(path))
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    ops = it._get_ops_details()  # the only op listing LiteRT's Python API offers
    macs = params = 0
    for op in ops:
        name, ins, outs = op["op_name"], list(op["inputs"]), list(op["outputs"])
        if name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") or len(ins) < 2:
            continue
        w = list(tensors[ins[1]]["shape"])
        out = list(tensors[outs[0]]["shape"])
        params += sum(int(math.prod(tensors[i]["shape"])) for i in ins[1:] if i >= 0)
        per_out = w[1] * w[2] if name == "DEPTHWISE_CONV_2D" else math.prod(w[1:])
        macs += int(math.prod(out) * per_out)
    inputs = {d["name"]: [int(x) for x in d["shape"]] for d in it.get_input_details()}
    counts = Counter(str(op["op_name"]) for op in ops)
    return Inspection(str(path), "tflite", path.stat().st_size, params, macs, dict(counts), dict(inputs))
