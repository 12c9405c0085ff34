"""Small ONNX models, built with onnx.helper, with the traits that made `quantize`/`build`/`inspect`
report wrong things on real third-party models (issue 17):

- `if_model`: the weights sit inside the branches of an `If` (as Constant nodes, as exporters of
  streaming voice models emit them), so a quantizer that only looks at the top graph does nothing;
- `collapsing_head`: a sigmoid head whose input mixes one large-magnitude feature with small ones
  that carry the signal, so dynamic int8 (one activation scale per tensor) rounds the signal away;
- `batch_sensitive_mlp` + `mixed_magnitude_batch`: with dynamic int8 the activation scale is taken
  over the whole batch, so one loud sample in a micro-batch changes every other sample's result;
- `recurrent_model`: LSTM, GRU and ConvTranspose with known shapes, for exact MAC counts;
- `loop_model`: weights inside a `Loop` body.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper
from onnx import numpy_helper as nh

OPSET = 17


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def _const(name: str, arr: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=nh.from_array(arr, f"{name}_value"))


def _branch(name: str, seed: int, d: int, h: int, out: int) -> onnx.GraphProto:
    r = np.random.default_rng(seed)
    w1 = (r.standard_normal((d, h)) / np.sqrt(d)).astype(np.float32)
    w2 = (r.standard_normal((h, out)) / np.sqrt(h)).astype(np.float32)
    nodes = [
        _const(f"{name}_w1", w1),
        _const(f"{name}_w2", w2),
        helper.make_node("MatMul", ["x", f"{name}_w1"], [f"{name}_h"], name=f"{name}_mm1"),
        helper.make_node("Relu", [f"{name}_h"], [f"{name}_r"]),
        helper.make_node("MatMul", [f"{name}_r", f"{name}_w2"], [f"{name}_y"], name=f"{name}_mm2"),
    ]
    y = helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, ["batch", out])
    return helper.make_graph(nodes, name, [], [y])


def if_model(path: Path, d: int = 64, h: int = 128, out: int = 8) -> Path:
    """y = If(max(x) > -1e30, then: MLP_a(x), else: MLP_b(x)); every weight inside a branch."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", d])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", out])
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
        _const("lim", np.array(-1e30, np.float32)),
        helper.make_node("Greater", ["m", "lim"], ["cond"]),
        helper.make_node(
            "If",
            ["cond"],
            ["y"],
            name="gate",
            then_branch=_branch("then", 1, d, h, out),
            else_branch=_branch("else", 2, d, h, out),
        ),
    ]
    return _save(helper.make_graph(nodes, "if_model", [x], [y]), path)


def collapsing_head(path: Path, d: int = 16, h: int = 32) -> Path:
    """p = sigmoid(relu(x W1) W2): feature 0 is large (hundreds) and nearly ignored (weight 1e-4);
    features 1.. are small (~0.05) and carry the decision."""
    r = np.random.default_rng(0)
    w1 = np.zeros((d, h), np.float32)
    w1[0] = 1e-4
    w1[1:] = r.standard_normal((d - 1, h)).astype(np.float32) * 8.0
    w2 = (r.standard_normal((h, 1)) * 0.5).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", d])
    p = helper.make_tensor_value_info("p", TensorProto.FLOAT, ["batch", 1])
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["z"], name="mm2"),
        helper.make_node("Sigmoid", ["z"], ["p"]),
    ]
    inits = [nh.from_array(w1, "w1"), nh.from_array(w2, "w2")]
    return _save(helper.make_graph(nodes, "head", [x], [p], initializer=inits), path)


def collapsing_head_inputs(n: int = 200, d: int = 16, seed: int = 1) -> np.ndarray:
    r = np.random.default_rng(seed)
    loud = r.uniform(500, 1000, (n, 1))
    quiet = r.standard_normal((n, d - 1)) * 0.05
    return np.concatenate([loud, quiet], axis=1).astype(np.float32)


def batch_sensitive_mlp(path: Path, d: int = 32, h: int = 64, out: int = 10) -> Path:
    """A plain two-layer MLP (random weights): nothing special in fp32."""
    r = np.random.default_rng(3)
    w1 = (r.standard_normal((d, h)) / np.sqrt(d)).astype(np.float32)
    w2 = (r.standard_normal((h, out)) / np.sqrt(h)).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", d])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", out])
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["logits"], name="mm2"),
    ]
    inits = [nh.from_array(w1, "w1"), nh.from_array(w2, "w2")]
    return _save(helper.make_graph(nodes, "mlp", [x], [y], initializer=inits), path)


def mixed_magnitude_batch(n: int = 256, d: int = 32, every: int = 8, loud: float = 300.0) -> np.ndarray:
    """Normal samples, with one sample in `every` scaled by `loud` (a clipped, saturated sensor)."""
    x = np.random.default_rng(4).standard_normal((n, d)).astype(np.float32)
    x[::every] *= loud
    return x


def recurrent_model(path: Path, seq: int = 5, inp: int = 8, hidden: int = 16) -> Path:
    """LSTM -> GRU on a [seq, 1, inp] sequence, plus a ConvTranspose on a [1, 4, 6, 6] map."""
    r = np.random.default_rng(5)

    def w(*shape: int) -> np.ndarray:
        return (r.standard_normal(shape) * 0.1).astype(np.float32)

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [seq, 1, inp])
    img = helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 4, 6, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [seq, 1, 1, hidden])
    up = helper.make_tensor_value_info("up", TensorProto.FLOAT, [1, 3, 13, 13])
    inits = [
        nh.from_array(w(1, 4 * hidden, inp), "lstm_w"),
        nh.from_array(w(1, 4 * hidden, hidden), "lstm_r"),
        nh.from_array(w(1, 3 * hidden, hidden), "gru_w"),
        nh.from_array(w(1, 3 * hidden, hidden), "gru_r"),
        nh.from_array(w(4, 3, 3, 3), "deconv_w"),  # [C_in, C_out, kH, kW]
    ]
    nodes = [
        helper.make_node("LSTM", ["x", "lstm_w", "lstm_r"], ["lstm_y"], hidden_size=hidden),
        helper.make_node("Squeeze", ["lstm_y", "axis1"], ["lstm_s"]),
        helper.make_node("GRU", ["lstm_s", "gru_w", "gru_r"], ["y"], hidden_size=hidden),
        helper.make_node("ConvTranspose", ["img", "deconv_w"], ["up"], strides=[2, 2]),
    ]
    inits.append(nh.from_array(np.array([1], np.int64), "axis1"))
    return _save(helper.make_graph(nodes, "rnn", [x, img], [y, up], initializer=inits), path)


def recurrent_macs(seq: int = 5, inp: int = 8, hidden: int = 16) -> int:
    lstm = seq * 4 * hidden * (inp + hidden)
    gru = seq * 3 * hidden * (hidden + hidden)
    deconv = (4 * 6 * 6) * (3 * 3 * 3)  # every input element x C_out x kernel
    return lstm + gru + deconv


def loop_model(path: Path, d: int = 16) -> Path:
    """y = x; repeat 3 times: y = relu(y W) with W inside the Loop body (a Constant node)."""
    wv = (np.random.default_rng(6).standard_normal((d, d)) / np.sqrt(d)).astype(np.float32)
    body_in = [
        helper.make_tensor_value_info("i", TensorProto.INT64, []),
        helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
        helper.make_tensor_value_info("y_in", TensorProto.FLOAT, ["batch", d]),
    ]
    body_out = [
        helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
        helper.make_tensor_value_info("y_out", TensorProto.FLOAT, ["batch", d]),
    ]
    body = helper.make_graph(
        [
            _const("w", wv),
            helper.make_node("Identity", ["c_in"], ["c_out"]),
            helper.make_node("MatMul", ["y_in", "w"], ["t"], name="body_mm"),
            helper.make_node("Relu", ["t"], ["y_out"]),
        ],
        "body",
        body_in,
        body_out,
    )
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", d])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", d])
    nodes = [
        _const("trips", np.array(3, np.int64)),
        _const("go", np.array(True)),
        helper.make_node("Loop", ["trips", "go", "x"], ["y"], name="repeat", body=body),
    ]
    return _save(helper.make_graph(nodes, "loop_model", [x], [y]), path)


def stateful_model(path: Path, d: int = 64, h: int = 32) -> Path:
    """y = (relu(x W) + mean(state over its first axis)) * sr / 16000, like a streaming voice model:
    x [batch, d] is batched, state [2, batch, h] is not (its first axis is not the batch), sr is 0-d."""
    w = (np.random.default_rng(7).standard_normal((d, h)) / np.sqrt(d)).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", d])
    state = helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", h])
    sr = helper.make_tensor_value_info("sr", TensorProto.INT64, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", h])
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["xw"], name="mm"),
        helper.make_node("Relu", ["xw"], ["r"]),
        helper.make_node("ReduceMean", ["state"], ["s"], axes=[0], keepdims=0),  # opset 17: axes attribute
        helper.make_node("Add", ["r", "s"], ["t"]),
        helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["srf", "base"], ["scale"]),
        helper.make_node("Mul", ["t", "scale"], ["y"]),
    ]
    inits = [
        nh.from_array(w, "w"),
        nh.from_array(np.array(16000.0, np.float32), "base"),
    ]
    return _save(helper.make_graph(nodes, "stateful", [x, state, sr], [y], initializer=inits), path)
