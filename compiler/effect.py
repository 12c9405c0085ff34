"""What a quantization pass changed: weighted nodes quantized or left in float, weights, bytes.

Owns `quant_effect(before, after)`, a static comparison of two ONNX files (every graph, including
`If`/`Loop`/`Scan` bodies), and `effect_problems`, the verdicts `quantize` and `build` refuse on:
nothing was quantized, or the file grew. Does not run models (quality is `compiler.quality`) and does
not decide whether to refuse (the callers do, with `--allow-noop`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compiler import _graphs
from compiler.errors import InputError


@dataclass(frozen=True)
class QuantEffect:
    """Counts over every graph of the model ("weighted": an op of `_graphs.WEIGHT_INPUT` fed a constant)."""

    weighted_nodes: int  # in the input model, with float weights
    weighted_in_subgraphs: int  # of those, inside If/Loop/Scan bodies
    quantized_nodes: int  # in the output: int8 weights (QDQ or integer ops)
    float_nodes_left: int  # in the output: weighted ops still fed float weights
    float_left_in_subgraphs: int
    float_weight_params_before: int
    float_weight_params_after: int
    size_before: int
    size_after: int

    @property
    def size_delta_bytes(self) -> int:
        return self.size_after - self.size_before

    @property
    def size_ratio(self) -> float:
        return self.size_after / self.size_before if self.size_before else 1.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "weighted_nodes": self.weighted_nodes,
            "weighted_in_subgraphs": self.weighted_in_subgraphs,
            "quantized_nodes": self.quantized_nodes,
            "float_nodes_left": self.float_nodes_left,
            "float_left_in_subgraphs": self.float_left_in_subgraphs,
            "float_weight_params_before": self.float_weight_params_before,
            "float_weight_params_after": self.float_weight_params_after,
            "size_before": self.size_before,
            "size_after": self.size_after,
            "size_delta_bytes": self.size_delta_bytes,
            "size_ratio": round(self.size_ratio, 4),
        }


def quant_effect(before: Path, after: Path) -> QuantEffect:
    """Compare an fp32 ONNX file with its quantized version.

    Raises:
        InputError: either file cannot be parsed as ONNX.
    """
    b, a = _counts(_load(before)), _counts(_load(after))
    return QuantEffect(
        weighted_nodes=b["float"],
        weighted_in_subgraphs=b["float_sub"],
        quantized_nodes=a["quantized"],
        float_nodes_left=a["float"],
        float_left_in_subgraphs=a["float_sub"],
        float_weight_params_before=b["float_params"],
        float_weight_params_after=a["float_params"],
        size_before=before.stat().st_size,
        size_after=after.stat().st_size,
    )


def effect_problems(effect: QuantEffect) -> list[str]:
    """Why a quantized file is not worth shipping (empty: it did what quantization is for)."""
    out = []
    if effect.quantized_nodes == 0:
        where = (
            f" ({effect.weighted_in_subgraphs} of them inside If/Loop/Scan bodies)"
            if effect.weighted_in_subgraphs
            else ""
        )
        out.append(f"nothing was quantized: 0 of {effect.weighted_nodes} weighted nodes{where}")
    if effect.size_delta_bytes > 0:
        out.append(
            f"the file grew by {effect.size_delta_bytes} B ({effect.size_ratio - 1:+.1%}: "
            f"{effect.size_before} -> {effect.size_after} B)"
        )
    return out


def _load(path: Path) -> Any:
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as err:
        raise InputError(f"{path} is not a valid ONNX model: {type(err).__name__}: {err}") from err


def _counts(model: Any) -> dict[str, int]:
    scopes = list(_graphs.walk(model.graph))
    consts: dict[str, Any] = {}
    for s in scopes:
        consts |= _graphs.constant_tensors(s.graph)
    dequantized = {
        n.output[0]
        for s in scopes
        for n in s.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in consts
    }
    out = {"float": 0, "float_sub": 0, "quantized": 0, "float_params": 0}
    for s in scopes:
        for n in s.graph.node:
            if n.op_type in _graphs.QUANTIZED_OPS:
                out["quantized"] += 1
                continue
            idx = _graphs.WEIGHT_INPUT.get(n.op_type)
            if idx is None or len(n.input) <= idx:
                continue
            w = n.input[idx]
            if w in dequantized or (w in consts and consts[w].data_type in (2, 3)):  # UINT8, INT8
                out["quantized"] += 1
            elif w in consts and consts[w].data_type in _graphs.FLOAT_TYPES:
                out["float"] += 1
                out["float_sub"] += s.depth > 0
    out["float_params"] = sum(
        _graphs.tensor_size(t)
        for t in consts.values()
        if t.data_type in _graphs.FLOAT_TYPES and len(t.dims) >= 2
    )
    return out
