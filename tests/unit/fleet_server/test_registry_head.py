"""The registry finds a classifier's linear head, reads it, and splices new weights into the same graph."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fleet_server.errors import InvalidRequestError
from fleet_server.federated.handoff import write_head_onnx
from fleet_server.registry.head import read_head, splice_head


def _backbone_gemm_model() -> bytes:
    """x (n, 8) -> MatMul(W1) -> Relu -> Gemm(W2^T stored (k, d), transB=1) -> Softmax."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(8, 6)).astype(np.float32)
    w2 = rng.normal(size=(4, 6)).astype(np.float32)  # (k, d): torch Linear layout
    b2 = rng.normal(size=4).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W1"], ["h"]),
            helper.make_node("Relu", ["h"], ["features"]),
            helper.make_node("Gemm", ["features", "W2", "B2"], ["logits"], transB=1),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
        ],
        "backbone",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", 4])],
        initializer=[numpy_helper.from_array(a, n) for a, n in ((w1, "W1"), (w2, "W2"), (b2, "B2"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


def test_head_of_a_matmul_add_model_round_trips(tmp_path: Path) -> None:
    w = np.arange(640, dtype=np.float32).reshape(64, 10) / 640
    b = np.linspace(-1, 1, 10, dtype=np.float32)
    model = write_head_onnx(tmp_path / "m.onnx", w, b, {}).read_bytes()
    head = read_head(model)
    np.testing.assert_array_equal(head["w"], w)
    np.testing.assert_array_equal(head["b"], b)
    new = splice_head(model, {"w": w * 2, "b": b + 1}, {"run_id": "r1"})
    again = read_head(new)
    np.testing.assert_array_equal(again["w"], w * 2)
    np.testing.assert_array_equal(again["b"], b + 1)
    props = {p.key: p.value for p in onnx.load_from_string(new).metadata_props}
    assert json.loads(props["edgeloop.lineage"]) == {"run_id": "r1"}


def test_gemm_head_is_read_transposed_and_the_backbone_is_left_byte_identical() -> None:
    model = _backbone_gemm_model()
    head = read_head(model)
    assert head["w"].shape == (6, 4) and head["b"].shape == (4,)
    new_w, new_b = head["w"] + 0.5, head["b"] - 0.25
    spliced = splice_head(model, {"w": new_w, "b": new_b}, {})
    before = {t.name: t.SerializeToString() for t in onnx.load_from_string(model).graph.initializer}
    after = {t.name: t.SerializeToString() for t in onnx.load_from_string(spliced).graph.initializer}
    assert after["W1"] == before["W1"]  # the frozen backbone is untouched
    assert after["W2"] != before["W2"] and after["B2"] != before["B2"]
    # The spliced graph computes softmax(relu(x W1) @ new_w + new_b).
    x = np.random.default_rng(1).normal(size=(5, 8)).astype(np.float32)
    w1 = numpy_helper.to_array(onnx.load_from_string(model).graph.initializer[0])
    logits = np.maximum(x @ w1, 0) @ new_w + new_b
    want = np.exp(logits - logits.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    got = ort.InferenceSession(spliced).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"w": np.zeros((6, 5), np.float32), "b": np.zeros(5, np.float32)}, "do not fit the head"),
        ({"w": np.zeros((6, 4), np.float32)}, "do not fit the head"),
        ({"w": np.full((6, 4), np.nan, np.float32), "b": np.zeros(4, np.float32)}, "not finite"),
    ],
)
def test_splice_refuses_arrays_that_are_not_this_head(arrays: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        splice_head(_backbone_gemm_model(), arrays, {})


def test_models_without_a_head_or_not_onnx_are_refused() -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "nohead",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    with pytest.raises(InvalidRequestError, match="no trainable head"):
        read_head(model.SerializeToString())
    with pytest.raises(InvalidRequestError, match="not a valid ONNX model"):
        read_head(b"\x08\x07garbage-bytes")
