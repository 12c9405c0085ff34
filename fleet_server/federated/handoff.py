"""Hand-off of a finished run's model: files the compiler can take, with lineage attached.

Writes `<out>/<run_id>/final.npz` (the arrays), `lineage.json` (run id, strategy, rounds with
participant counts and digests, DP epsilon/delta, parent digest) and, when `onnx` is installed
(the compiler extra), `final.onnx`: features -> MatMul(W) + b -> logits -> Softmax, with the
lineage in the model's metadata_props. These files are the run's own record; when the run names
a registry model, the runner's completion hook (`fleet_server.registry.wiring`) splices the head
into that model and the registry compiles and releases it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def write_artifacts(out_dir: Path, arrays: dict[str, np.ndarray], lineage: dict[str, Any]) -> list[Path]:
    """Write the model files for one run; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "final.npz", out_dir / "lineage.json"]
    np.savez(paths[0], **arrays)  # type: ignore[arg-type]
    paths[1].write_text(json.dumps(lineage, indent=1, default=str))
    head = _softmax_head(arrays)
    if head is not None and importlib.util.find_spec("onnx") is not None:
        paths.append(write_head_onnx(out_dir / "final.onnx", *head, lineage))
    logger.info("hand-off written run_id=%s files=%s", lineage.get("run_id"), [p.name for p in paths])
    return paths


def _softmax_head(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    values = list(arrays.values())
    if len(values) == 2 and values[0].ndim == 2 and values[1].shape == (values[0].shape[1],):
        return values[0].astype(np.float32), values[1].astype(np.float32)
    return None


def write_head_onnx(path: Path, w: np.ndarray, b: np.ndarray, lineage: dict[str, Any]) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
        ],
        "federated_head",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", w.shape[0]])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", w.shape[1]])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgeloop-federated"
    )
    model.ir_version = 9
    helper.set_model_props(model, {"edgeloop.lineage": json.dumps(lineage, default=str)})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
