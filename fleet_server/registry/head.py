"""The trainable head of an ONNX classifier: find it, read its weights, write new ones in place.

Devices fine-tune only the last linear layer (`agent/federated/trainer.py`: `W (d, k)`, `b (k,)`) on
features from the frozen rest of the model, so a federated round starts from the head of a
registered version and ends by splicing the aggregated head back into that same graph: every
other byte of the model stays as it was (which is also what makes the OTA delta tiny). The head
is the last `MatMul` (weight initializer, then `Add` of a bias initializer) or `Gemm` (B and C
initializers) in graph order. Pure functions over bytes; no files, no database.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from fleet_server.errors import InvalidRequestError


@dataclass(frozen=True)
class Head:
    weight: str  # initializer names
    bias: str
    transposed: bool  # Gemm with transB=1: the stored weight is (k, d)


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as err:  # pragma: no cover - onnx is in the server extra
        raise InvalidRequestError(
            "the model registry needs the onnx package (pip install edgeloop[server])"
        ) from err
    return onnx


def _load(model_bytes: bytes) -> Any:
    onnx = _onnx()
    try:
        model = onnx.load_from_string(model_bytes)
        onnx.checker.check_model(model)
    except Exception as err:  # onnx raises DecodeError, ValidationError, ...
        raise InvalidRequestError(f"not a valid ONNX model: {type(err).__name__}: {err}"[:300]) from err
    return model


def find_head(model: Any) -> Head:
    """Raises: InvalidRequestError when the graph ends in no linear layer with constant weights."""
    inits = {t.name: t for t in model.graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in reversed(model.graph.node):
        if node.op_type == "Gemm" and len(node.input) == 3 and {node.input[1], node.input[2]} <= set(inits):
            attrs = {a.name: a for a in node.attribute}
            if "transA" in attrs and attrs["transA"].i:
                continue
            trans = bool(attrs["transB"].i) if "transB" in attrs else False
            if len(inits[node.input[1]].dims) == 2 and len(inits[node.input[2]].dims) == 1:
                return Head(node.input[1], node.input[2], trans)
        if node.op_type == "MatMul" and node.input[1] in inits and len(inits[node.input[1]].dims) == 2:
            for add in consumers.get(node.output[0], []):
                if add.op_type != "Add":
                    continue
                other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
                if other in inits and len(inits[other].dims) == 1:
                    return Head(node.input[1], other, False)
    raise InvalidRequestError(
        "the model has no trainable head: no final MatMul+Add or Gemm with constant weights"
    )


def read_head(model_bytes: bytes) -> dict[str, np.ndarray]:
    """The head as the trainer's arrays: {"w": (d, k) float32, "b": (k,) float32}."""
    model = _load(model_bytes)
    head = find_head(model)
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    w = numpy_helper.to_array(inits[head.weight]).astype(np.float32)
    b = numpy_helper.to_array(inits[head.bias]).astype(np.float32)
    if head.transposed:
        w = w.T
    if w.shape[1] != b.shape[0]:
        raise InvalidRequestError(f"head weight {w.shape} and bias {b.shape} disagree")
    return {"w": np.ascontiguousarray(w), "b": b}


def splice_head(model_bytes: bytes, arrays: dict[str, np.ndarray], lineage: dict[str, Any]) -> bytes:
    """The same model with new head weights and `edgeloop.lineage` metadata.

    Raises:
        InvalidRequestError: the arrays are not a head of the model's shape, or not finite.
    """
    model = _load(model_bytes)
    head = find_head(model)
    from onnx import helper, numpy_helper

    values = list(arrays.values())
    current = read_head(model_bytes)
    if len(values) != 2 or values[0].shape != current["w"].shape or values[1].shape != current["b"].shape:
        got = [v.shape for v in values]
        raise InvalidRequestError(
            f"arrays {got} do not fit the head {current['w'].shape}, {current['b'].shape}"
        )
    w, b = (np.asarray(v, dtype=np.float32) for v in values)
    if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
        raise InvalidRequestError("head weights are not finite")
    new = {head.weight: w.T if head.transposed else w, head.bias: b}
    for i, init in enumerate(model.graph.initializer):
        if init.name in new:
            dtype = numpy_helper.to_array(init).dtype
            model.graph.initializer[i].CopyFrom(
                numpy_helper.from_array(np.ascontiguousarray(new[init.name]).astype(dtype), init.name)
            )
    props = {p.key: p.value for p in model.metadata_props}
    props["edgeloop.lineage"] = json.dumps(lineage, sort_keys=True, default=str)
    helper.set_model_props(model, props)
    _onnx().checker.check_model(model)
    out: bytes = model.SerializeToString()
    return out
