"""The demo's model: the digits CNN trained on scikit-learn's bundled digits (offline, ~3 s).

Writes what a data scientist hands the compiler: weights for `tests.fixtures.digits:make_digits_cnn`,
calibration inputs, a labelled evaluation set, and a small golden set for the release gate.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def prepare(work: Path) -> dict[str, Path]:
    import torch

    from tests.fixtures.digits import load_digits_data, train_digits_cnn

    work.mkdir(parents=True, exist_ok=True)
    data = load_digits_data()
    model = train_digits_cnn(data)
    paths = {
        "weights": work / "digits.pt",
        "calib": work / "calib.npz",
        "eval": work / "eval.npz",
        "golden": work / "golden.npz",
        "shifted": work / "shifted.npy",
        "normal": work / "normal.npy",
    }
    torch.save(model.state_dict(), paths["weights"])
    np.savez(paths["calib"], x=data.x_train[:256])
    np.savez(paths["eval"], x=data.x_test, y=data.y_test)
    np.savez(paths["golden"], **{"input:input": data.x_test[:64]}, labels=data.y_test[:64])
    np.save(paths["normal"], data.x_test[64:96])
    # A sensor that went bright: every pixel +0.35 (clipped), what a dirty lens or new lighting does.
    # 200 rows per request: the agent's API takes batches of up to 256.
    np.save(paths["shifted"], np.clip(data.x_test[:200] + 0.35, 0, 1).astype(np.float32))
    return paths


def prepare_head(work: Path, devices: list[str]) -> dict[str, Path]:
    """The federated model: a 64x10 softmax head on the digit pixels, trained centrally on only
    40 samples (the registry's v1), plus one labelled non-IID shard per device: the samples each
    device's app confirms through `edgeloop-agent feedback`."""
    from tests.fixtures.heads import flat_digits, write_head_model
    from tests.helpers.fl_fleet import dirichlet_split

    paths = write_head_model(work, n_train=40)
    x_tr, y_tr, x_te, _ = flat_digits()
    for device, rows in zip(devices, dirichlet_split(y_tr[40:], len(devices), 0.5, seed=3), strict=True):
        paths[f"shard:{device}"] = work / f"feedback-{device}.npz"
        np.savez(paths[f"shard:{device}"], x=x_tr[40:][rows], y=y_tr[40:][rows])
    paths["head_inputs"] = work / "head-inputs.npy"
    np.save(paths["head_inputs"], x_te[:16])
    return paths


HIDDEN = 192  # width of the frozen feature layer


def write_backbone_head(
    path: Path, backbone: tuple[np.ndarray, np.ndarray], head: tuple[np.ndarray, np.ndarray]
) -> Path:
    """pixels (n, 64) -> Relu(pixels @ R + c) = `features` (frozen) -> MatMul + Add -> Softmax =
    `probabilities`. The agent stores the `features` output of labelled feedback, federated rounds
    train the head on them, and the registry splices the new head into this graph: only the head
    tensor changes between versions, which is what a delta update can skip."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    (r, c), (w, b) = backbone, head
    graph = helper.make_graph(
        [
            # Einsum, not MatMul: the compiler's int8 recipes quantize MatMul weights (each recipe
            # its own way), so the frozen layer stays the same fp32 bytes in every version and a
            # delta update ships only the head
            helper.make_node("Einsum", ["pixels", "R"], ["xr"], equation="bi,ih->bh"),
            helper.make_node("Add", ["xr", "c"], ["pre"]),
            helper.make_node("Relu", ["pre"], ["features"]),
            helper.make_node("MatMul", ["features", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
        ],
        "digits_head",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 64])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", w.shape[1]]),
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", w.shape[0]]),
        ],
        initializer=[numpy_helper.from_array(a, n) for a, n in ((r, "R"), (c, "c"), (w, "W"), (b, "b"))],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgeloop-demo"
    )
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def prepare_loop(work: Path, learners: list[str], *, per_device: int = 150) -> dict[str, Path]:
    """The closed loop's model and data: a frozen random-feature layer with a softmax head on top
    (v1's head trained centrally on 200 upright digits), calibration inputs, an evaluation set of
    upright digits (the compiler also builds the drift reference from it), a golden set, two
    labelled shards per learner (upright digits its app confirmed before the site's cameras were
    turned, turned digits after: the device keeps both), the stream's inputs and the held-out test
    digits (never trained on)."""
    from demo_stream import rotate

    from agent.federated import trainer
    from tests.fixtures.heads import flat_digits

    work.mkdir(parents=True, exist_ok=True)
    x_tr, y_tr, x_te, y_te = flat_digits()
    rng = np.random.default_rng(7)
    r = (rng.normal(0.0, 1.0, (64, HIDDEN)) / np.sqrt(6.4)).astype(np.float32)
    c = rng.normal(0.0, 0.5, HIDDEN).astype(np.float32)
    features = np.maximum(x_tr[:200] @ r + c, 0)
    zero = [np.zeros((HIDDEN, 10), np.float32), np.zeros(10, np.float32)]
    head, _ = trainer.train(zero, features, y_tr[:200], trainer.TrainParams(lr=0.1, epochs=30))
    paths = {k: work / f"{k}.npz" for k in ("calib", "eval", "golden", "heldout", "stream")}
    paths["model"] = write_backbone_head(work / "digits-head-v1.onnx", (r, c), (head[0], head[1]))
    np.savez(paths["calib"], x=x_tr[:256])
    np.savez(paths["eval"], x=x_te, y=y_te)
    np.savez(paths["golden"], **{"input:pixels": x_te[:64]}, labels=y_te[:64])
    np.savez(paths["heldout"], x=x_te[96:], x_rotated=rotate(x_te[96:]), y=y_te[96:])
    np.savez(paths["stream"], x=x_tr[200:])
    pool, labels = x_tr[200:], y_tr[200:]
    for i, device in enumerate(learners):
        rows = np.arange(i, len(pool), len(learners))
        turned, upright = rows[:per_device], rows[per_device : 2 * per_device]
        paths[f"upright:{device}"] = work / f"feedback-upright-{device}.npz"
        np.savez(paths[f"upright:{device}"], x=pool[upright], y=labels[upright])
        paths[f"turned:{device}"] = work / f"feedback-turned-{device}.npz"
        np.savez(paths[f"turned:{device}"], x=rotate(pool[turned]), y=labels[turned])
    return paths


def silently_bad(fp32_model: Path, out: Path, temperature: float = 8.0) -> Path:
    """A release that loads, passes signature, golden-set and agreement checks, and is still bad:
    the head exported with its logits divided by `temperature` (same argmax everywhere, so the same
    accuracy; confidence flattened, so an application thresholding on it stops acting)."""
    from fleet_server.registry.head import read_head, splice_head

    data = fp32_model.read_bytes()
    head = read_head(data)
    bad = {"w": head["w"] / temperature, "b": head["b"] / temperature}
    out.write_bytes(splice_head(data, bad, {"bad_export": temperature}))
    return out
