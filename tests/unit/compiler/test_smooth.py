"""Smoothing keeps the fp32 function, folds where it can, and helps per-tensor int8 on outliers."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler import measure
from compiler.data import from_arrays
from compiler.errors import UnsupportedError
from compiler.passes import quantize, smooth

K, N = 64, 32


def _model(path: Path, *, through_mul: bool) -> np.ndarray:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(K, N)).astype(np.float32)
    nodes = []
    x_name = "x"
    inits = [numpy_helper.from_array(w, "w")]
    if through_mul:  # x -> Mul(x, 0.5) -> MatMul : the 0.5 can absorb the smoothing factor
        inits.append(numpy_helper.from_array(np.array(0.5, np.float32), "half"))
        nodes.append(helper.make_node("Mul", ["x", "half"], ["xh"], name="half_mul"))
        x_name = "xh"
    nodes.append(helper.make_node("MatMul", [x_name, "w"], ["y"], name="mm"))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", N])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    x = rng.normal(size=(256, K)).astype(np.float32)
    x[:, 3] *= 60.0  # one outlier channel, like transformer FFN activations
    return x


@pytest.mark.parametrize("through_mul", [False, True])
def test_smoothing_is_the_same_function_and_helps_int8(tmp_path: Path, through_mul: bool) -> None:
    fp32 = tmp_path / "m.onnx"
    x = _model(fp32, through_mul=through_mul)
    data = from_arrays({"x": x})
    sm = smooth.smooth_matmuls(fp32, tmp_path / "s.onnx", data, alpha=0.7, min_outlier_ratio=10)
    mul_added = Counter(n.op_type for n in onnx.load(str(sm)).graph.node)["Mul"] - int(through_mul)
    assert mul_added == (0 if through_mul else 1)  # folded into the constant when there is one

    def run(p: Path) -> np.ndarray:
        return measure.predict(measure.open_runtime(p, "onnxruntime", 1), {"x": x})

    ref = run(fp32)
    np.testing.assert_allclose(run(sm), ref, rtol=1e-4, atol=1e-3)
    plain_q = quantize.quantize_dynamic(fp32, tmp_path / "q.onnx")
    smooth_q = quantize.quantize_dynamic(sm, tmp_path / "sq.onnx")
    err_plain = np.linalg.norm(run(plain_q) - ref)
    err_smooth = np.linalg.norm(run(smooth_q) - ref)
    assert err_smooth < 0.7 * err_plain


def test_even_channels_are_left_alone_and_convnets_are_refused(tmp_path: Path) -> None:
    fp32 = tmp_path / "m.onnx"
    x = _model(fp32, through_mul=False)
    x[:, 3] /= 60.0  # no outliers
    out = smooth.smooth_matmuls(fp32, tmp_path / "s.onnx", from_arrays({"x": x}), min_outlier_ratio=10)
    assert onnx.load(str(out)).graph.node[0].op_type == "MatMul"  # untouched
    conv = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        "c",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 2])],
        [numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "w")],
    )
    onnx.save(helper.make_model(conv, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "c.onnx"))
    with pytest.raises(UnsupportedError, match="MatMul"):
        smooth.smooth_matmuls(
            tmp_path / "c.onnx", tmp_path / "cs.onnx", from_arrays({"x": np.ones((2, 1, 4, 4))})
        )
