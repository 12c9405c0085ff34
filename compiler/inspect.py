"""`inspect`: what is inside an artifact: op counts, parameters, MACs per sample, size on disk.

Owns static analysis of `.onnx` (shape inference at batch 1, every `If`/`Loop`/`Scan` body included)
and `.tflite` (LiteRT's op list). Parameters are every non-int64 constant (initializers and Constant
nodes, in subgraphs too). MACs count the weighted ops only (Conv, ConvTranspose, MatMul/Gemm,
LSTM/GRU/RNN, FullyConnected, TRANSPOSE_CONV and their quantized forms); elementwise work is left out.
An `If` counts its costlier branch and a `Loop`/`Scan` body one iteration (trip counts are data), and
`notes` says so. Does not run the model.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compiler import _graphs
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
_ONNX_RECURRENT = {"LSTM": 4, "GRU": 3, "RNN": 1, "DynamicQuantizeLSTM": 4}  # gates per direction
RECURRENT_OPS = (*_ONNX_RECURRENT, "UNIDIRECTIONAL_SEQUENCE_LSTM", "BIDIRECTIONAL_SEQUENCE_LSTM")
RECURRENT_OPS += ("UNIDIRECTIONAL_SEQUENCE_RNN", "BIDIRECTIONAL_SEQUENCE_RNN")
TRANSPOSED_OPS = ("ConvTranspose", "TRANSPOSE_CONV")


@dataclass(frozen=True)
class Inspection:
    path: str
    format: str
    size_bytes: int
    params: int
    macs: int
    ops: dict[str, int] = field(default_factory=dict)
    inputs: dict[str, list[int | str]] = field(default_factory=dict)
    subgraphs: int = 0  # If branches, Loop/Scan bodies (ONNX)
    params_in_subgraphs: int = 0
    recurrent_ops: int = 0  # LSTM/GRU/RNN (and LiteRT's sequence LSTM/RNN)
    transposed_ops: int = 0  # ConvTranspose / TRANSPOSE_CONV
    notes: list[str] = field(default_factory=list)  # what the counts leave out


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

    proto = onnx.load(str(path))
    graph = proto.graph
    inits = {i.name for i in graph.initializer}
    inputs = {
        i.name: [
            d.dim_value if d.HasField("dim_value") else d.dim_param for d in i.type.tensor_type.shape.dim
        ]
        for i in graph.input
        if i.name not in inits
    }
    for scope in _graphs.walk(graph):  # Loop/Scan bodies declare their own (symbolic) inputs
        for i in scope.graph.input:
            for d in i.type.tensor_type.shape.dim:
                if not d.HasField("dim_value"):
                    d.dim_value = 1  # batch (and any other symbolic dim) = 1 for per-sample MACs
    inferred = onnx.shape_inference.infer_shapes(proto)
    scopes = list(_graphs.walk(inferred.graph))
    shapes: dict[str, list[int]] = {}
    consts: dict[str, Any] = {}
    for scope in scopes:
        shapes.update(_onnx_shapes(scope.graph))
        consts.update(_graphs.constant_tensors(scope.graph))
    shapes.update({k: list(t.dims) for k, t in consts.items()})
    notes: list[str] = []
    macs = _graph_macs(inferred.graph, shapes, notes)
    params = sub_params = 0
    for scope in scopes:
        n = sum(
            _graphs.tensor_size(t)
            for t in _graphs.constant_tensors(scope.graph).values()
            if t.data_type != onnx.TensorProto.INT64  # shapes and indices, not parameters
        )
        params += n
        sub_params += n if scope.depth else 0
    ops = Counter(n.op_type for s in scopes for n in s.graph.node)
    return Inspection(
        str(path),
        "onnx",
        path.stat().st_size,
        params,
        macs,
        dict(ops),
        inputs,
        subgraphs=len(scopes) - 1,
        params_in_subgraphs=sub_params,
        recurrent_ops=sum(ops[o] for o in RECURRENT_OPS),
        transposed_ops=sum(ops[o] for o in TRANSPOSED_OPS),
        notes=sorted(set(notes)),
    )


def _onnx_shapes(graph: Any) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for vi in list(graph.value_info) + list(graph.output) + list(graph.input):
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        if dims and all(dims):
            out[vi.name] = dims
    return out


def _graph_macs(graph: Any, shapes: dict[str, list[int]], notes: list[str]) -> int:
    """MACs of one graph; an `If` counts its costlier branch, a `Loop`/`Scan` body one iteration."""
    total = 0
    for node in graph.node:
        bodies = {a.name: a.g for a in node.attribute if a.HasField("g")}
        if node.op_type == "If" and bodies:
            total += max(_graph_macs(b, shapes, notes) for b in bodies.values())
        elif bodies:
            total += sum(_graph_macs(b, shapes, notes) for b in bodies.values())
            notes.append(f"{node.op_type} bodies are counted once (per iteration)")
        else:
            total += _onnx_macs(node, shapes, notes)
    return total


def _onnx_macs(node: Any, shapes: dict[str, list[int]], notes: list[str]) -> int:
    if node.op_type in _ONNX_RECURRENT:
        return _recurrent_macs(node, shapes, notes)
    out = shapes.get(node.output[0]) if node.output else None
    if out is None:
        return 0
    if node.op_type in _ONNX_CONV:
        w = shapes.get(node.input[_ONNX_CONV[node.op_type][1]])
        return math.prod(out) * math.prod(w[1:]) if w else 0
    if node.op_type == "ConvTranspose":  # every input element scatters into C_out/group x kernel outputs
        x, w = shapes.get(node.input[0]), shapes.get(node.input[1])
        return math.prod(x) * math.prod(w[1:]) if x and w else 0
    if node.op_type in _ONNX_MATMUL:
        a = shapes.get(node.input[_ONNX_MATMUL[node.op_type][0]])
        return math.prod(out) * a[-1] if a else 0
    return 0


def _recurrent_macs(node: Any, shapes: dict[str, list[int]], notes: list[str]) -> int:
    """seq x batch x directions x (gates*hidden) x (input + hidden), from X, W and R."""
    x, w, r = (shapes.get(node.input[i]) if len(node.input) > i else None for i in range(3))
    if not (w and r and len(w) == 3 and len(r) == 3):
        notes.append(f"{node.op_type} weights of unknown shape: its MACs are not counted")
        return 0
    layout = next((a.i for a in node.attribute if a.name == "layout"), 0)
    if x and len(x) == 3:
        seq, batch = (x[1], x[0]) if layout else (x[0], x[1])
    else:
        seq, batch = 1, 1
        notes.append(f"{node.op_type} input of unknown length: MACs counted for one step")
    return seq * batch * w[0] * w[1] * (w[2] + r[2])


def _inspect_tflite(path: Path) -> Inspection:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(str(path))
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    ops = it._get_ops_details()  # the only op listing LiteRT's Python API offers
    macs = params = 0
    for op in ops:
        name, ins, outs = op["op_name"], list(op["inputs"]), list(op["outputs"])
        if name == "TRANSPOSE_CONV" and len(ins) >= 3:  # (output_shape, weights OHWI, input NHWC, bias)
            w, x = list(tensors[ins[1]]["shape"]), list(tensors[ins[2]]["shape"])
            params += sum(int(math.prod(tensors[i]["shape"])) for i in (ins[1], *ins[3:]) if i >= 0)
            macs += int(math.prod(x) * math.prod(w[:3]))
            continue
        if name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") or len(ins) < 2:
            continue
        w = list(tensors[ins[1]]["shape"])
        out = list(tensors[outs[0]]["shape"])
        params += sum(int(math.prod(tensors[i]["shape"])) for i in ins[1:] if i >= 0)
        per_out = w[1] * w[2] if name == "DEPTHWISE_CONV_2D" else math.prod(w[1:])
        macs += int(math.prod(out) * per_out)
    inputs = {d["name"]: [int(x) for x in d["shape"]] for d in it.get_input_details()}
    counts = Counter(str(op["op_name"]) for op in ops)
    recurrent = sum(counts[o] for o in RECURRENT_OPS)
    notes = ["LiteRT recurrent ops: their parameters and MACs are not counted"] if recurrent else []
    return Inspection(
        str(path),
        "tflite",
        path.stat().st_size,
        params,
        macs,
        dict(counts),
        dict(inputs),
        recurrent_ops=recurrent,
        transposed_ops=sum(counts[o] for o in TRANSPOSED_OPS),
        notes=notes,
    )
