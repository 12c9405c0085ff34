"""`edgeloop-compile quantize` says what it changed and refuses what did nothing or did harm.

Decided behaviour (issue 17): a quantized file is written only when some weight was quantized, the
file did not grow, and quality vs the fp32 model at batch 1 stays inside the budget. Otherwise the
run exits non-zero, writes nothing, and `--json` carries the measured effect and quality:
no-op or growth -> exit 53 (`--allow-noop` writes it with warnings), quality -> exit 52.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from compiler.cli import main
from compiler.errors import ExitCode
from tests.unit.compiler import honest_models as hm


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    capsys.readouterr()
    code = main(["quantize", *argv, "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out)


def _outputs(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])


def test_static_int8_of_weights_inside_if_branches_is_refused_as_a_noop(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = hm.if_model(tmp_path / "if.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32))
    out = tmp_path / "if-int8.onnx"
    code, doc = _run(capsys, "--model", str(model), "--calib", str(tmp_path / "calib.npz"), "--out", str(out))
    assert code == ExitCode.NO_EFFECT
    assert (
        "nothing was quantized: 0 of 4 weighted nodes (4 of them inside If/Loop/Scan bodies)"
        in doc["message"]
    )
    effect = doc["details"]["effect"]
    assert effect["quantized_nodes"] == 0
    assert effect["float_left_in_subgraphs"] == 4
    assert effect["size_after"] > effect["size_before"]  # QDQ on activations only: it grew
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".if-int8")]  # no temp left

    # --allow-noop writes it, and says so loudly (stderr and --json warnings)
    capsys.readouterr()
    argv = ["quantize", "--model", str(model), "--calib", str(tmp_path / "calib.npz"), "--out", str(out)]
    assert main([*argv, "--allow-noop", "--json"]) == ExitCode.OK
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert out.exists()
    assert any(w.startswith("nothing was quantized") for w in doc["warnings"])
    assert any(w.startswith("the file grew") for w in doc["warnings"])
    assert "WARNING: nothing was quantized" in captured.err


def test_dynamic_int8_reaches_the_weights_inside_if_branches(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = hm.if_model(tmp_path / "if.onnx")
    x = np.random.default_rng(1).standard_normal((100, 64)).astype(np.float32)
    np.savez(tmp_path / "eval.npz", x=x)
    out = tmp_path / "if-dyn.onnx"
    code, doc = _run(
        capsys,
        "--model",
        str(model),
        "--mode",
        "dynamic",
        "--eval",
        str(tmp_path / "eval.npz"),
        "--out",
        str(out),
    )
    assert code == ExitCode.OK, doc
    assert doc["effect"]["quantized_nodes"] == 4
    assert doc["effect"]["float_nodes_left"] == 0
    assert doc["effect"]["size_ratio"] < 0.5
    assert doc["warnings"] == []
    assert doc["quality"]["batch"] == 1
    assert doc["quality"]["agreement"] >= 0.95
    # independent check: the written file really is int8 and close to fp32
    ref, got = _outputs(model, x), _outputs(out, x)
    assert (ref.argmax(1) == got.argmax(1)).mean() >= 0.95


def test_dynamic_int8_that_collapses_a_sigmoid_head_is_refused_with_the_measured_drop(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = hm.collapsing_head(tmp_path / "head.onnx")
    x = hm.collapsing_head_inputs()
    # the collapse is real: plain onnxruntime dynamic int8 turns a spread of probabilities into one value
    plain = tmp_path / "plain-int8.onnx"
    quantize_dynamic(str(model), str(plain), weight_type=QuantType.QInt8, per_channel=True)
    ref, q = _outputs(model, x)[:, 0], _outputs(plain, x)[:, 0]
    assert ref.std() > 0.2
    assert 0.2 < (ref > 0.5).mean() < 0.8
    assert q.std() < 0.01  # every input gets (about) the same probability

    np.savez(tmp_path / "eval.npz", x=x)
    out = tmp_path / "head-int8.onnx"
    code, doc = _run(
        capsys,
        "--model",
        str(model),
        "--mode",
        "dynamic",
        "--eval",
        str(tmp_path / "eval.npz"),
        "--out",
        str(out),
    )
    assert code == ExitCode.BUDGET
    assert "quality vs the fp32 model fell past the budget" in doc["message"]
    assert "< 0.9500" in doc["message"]
    quality = doc["details"]["quality"]
    assert quality["agreement"] < 0.8
    lo, hi = quality["agreement_interval"]
    assert lo < quality["agreement"] < hi < 0.95  # the drop is beyond doubt at n=200
    assert quality["mean_abs_diff"] > 0.1
    assert doc["details"]["effect"]["quantized_nodes"] == 2  # it did quantize: the harm is numeric
    assert not out.exists()


def test_a_file_that_grows_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = hm.loop_model(tmp_path / "loop.onnx")  # 256 weights: int8 overhead exceeds the saving
    np.savez(tmp_path / "eval.npz", x=np.random.default_rng(2).standard_normal((50, 16)).astype(np.float32))
    out = tmp_path / "loop-int8.onnx"
    code, doc = _run(
        capsys,
        "--model",
        str(model),
        "--mode",
        "dynamic",
        "--eval",
        str(tmp_path / "eval.npz"),
        "--out",
        str(out),
    )
    assert code == ExitCode.NO_EFFECT
    assert "the file grew by" in doc["message"]
    assert doc["details"]["effect"]["quantized_nodes"] == 1  # the Loop body's MatMul was reached
    assert not out.exists()


def test_without_data_quality_is_not_checked_and_the_result_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = hm.if_model(tmp_path / "if.onnx")
    out = tmp_path / "if-dyn.onnx"
    code, doc = _run(capsys, "--model", str(model), "--mode", "dynamic", "--out", str(out))
    assert code == ExitCode.OK
    assert doc["quality"] is None
    assert any(w.startswith("quality not checked") for w in doc["warnings"])
    assert out.exists()


def test_a_stateful_model_with_a_0d_input_is_checked_one_call_per_sample(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = hm.stateful_model(tmp_path / "vad.onnx", d=64, h=32)
    rng = np.random.default_rng(8)
    n = 40
    x = rng.standard_normal((n, 64)).astype(np.float32)
    state = rng.standard_normal((n, 2, 1, 32)).astype(np.float32)  # one [2, 1, 32] state per call
    np.savez(tmp_path / "eval.npz", x=x, state=state, sr=np.array(16000, np.int64))
    out = tmp_path / "vad-int8.onnx"
    argv = [
        "--model",
        str(model),
        "--mode",
        "dynamic",
        "--eval",
        str(tmp_path / "eval.npz"),
        "--out",
        str(out),
    ]
    code, doc = _run(capsys, *argv, "--min-agreement", "0.9")
    assert code == ExitCode.OK, doc
    assert doc["quality"]["samples"] == n
    assert doc["effect"]["quantized_nodes"] == 1
    # the feeds really were per sample: the int8 file reproduces fp32 on one call of the data
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    ref = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    feed = {"x": x[:1], "state": state[0], "sr": np.array(16000, np.int64)}
    got, want = sess.run(None, feed)[0], ref.run(None, feed)[0]
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max()
