"""Issue 17: calibration and bench data for models with non-batched inputs (a recurrent state whose first
axis is not the batch, a 0-d sample rate): no raw traceback on 0-d arrays, one call per sample,
static int8 calibration and bench on such a model, and the compile request's batched-inputs stamp."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.inference.onnx_backend import OnnxRuntime
from compiler.bench import bench_artifact
from compiler.data import batched_inputs, check_against, from_arrays, load_dataset
from compiler.errors import InputError
from compiler.passes.export import onnx_input_specs
from compiler.signature import stamp_batched_inputs
from tests.fixtures.stateful import FRAME, build_stateful_onnx


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return build_stateful_onnx(tmp_path / "vad.onnx")


def _npz(tmp_path: Path, n: int = 24, **override: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    arrays = {
        "x": rng.standard_normal((n, FRAME)).astype(np.float32),
        "state": (rng.standard_normal((n, 2, 1, 8)) * 0.5).astype(np.float32),
        "sr": np.array(16000, np.int64),
        **override,
    }
    path = tmp_path / "calib.npz"
    np.savez(path, **arrays)
    return path


def test_zero_d_arrays_load_as_constants_and_feed_every_call(tmp_path: Path, model: Path) -> None:
    specs = onnx_input_specs(model)
    assert batched_inputs(specs) == {"x"}
    data = check_against(load_dataset(_npz(tmp_path)), specs, "calibration")
    assert len(data) == 24 and data.stateful and data.per_call == {"state"}
    feeds = list(data.calls(batch_size=8))
    assert len(feeds) == 24  # one sample per call, whatever the batch size asked
    assert {k: v.shape for k, v in feeds[3].items()} == {"x": (1, FRAME), "state": (2, 1, 8), "sr": ()}
    with pytest.raises(InputError, match="feed one sample per call"):
        data.batch(0, 4)
    runtime = OnnxRuntime(model)
    assert runtime.run(feeds[0])["prob"].shape == (1, 1)


def test_bad_stateful_data_gets_a_clear_error(tmp_path: Path, model: Path) -> None:
    specs = onnx_input_specs(model)
    # the state given once instead of per sample: named at load time, with the convention
    with pytest.raises(
        InputError, match=r"a non-batched input such as a recurrent state takes one value per sample"
    ):
        load_dataset(_npz(tmp_path, state=np.zeros((2, 1, 8), np.float32)))
    with pytest.raises(
        InputError, match=r"'state' has shape \(24, 2, 8\); the model input \(2, 'batch', 8\) is not"
    ):
        check_against(
            load_dataset(_npz(tmp_path, state=np.zeros((24, 2, 8), np.float32))), specs, "calibration"
        )
    # a folder whose files disagree on a 0-d constant
    (tmp_path / "dir").mkdir()
    for i, sr in enumerate((16000, 8000)):
        np.savez(tmp_path / "dir" / f"{i}.npz", x=np.zeros((2, FRAME), np.float32), sr=np.array(sr))
    with pytest.raises(InputError, match="0-d constant in some files and differs"):
        load_dataset(tmp_path / "dir")
    # a plain in-memory dataset with a 0-d array no longer breaks len()
    assert len(from_arrays({"sr": np.array(1)})) == 1


def test_calibrated_int8_and_bench_on_a_stateful_model(tmp_path: Path, model: Path) -> None:
    from compiler.passes.quantize import quantize_static

    data = check_against(load_dataset(_npz(tmp_path, n=40)), onnx_input_specs(model), "calibration")
    quant = quantize_static(model, tmp_path / "int8.onnx", data)
    feed = data.batch(5, 6)
    fp32_prob = OnnxRuntime(model).run(feed)["prob"]
    int8_prob = OnnxRuntime(quant).run(feed)["prob"]
    assert abs(float(fp32_prob[0, 0]) - float(int8_prob[0, 0])) < 0.05
    result = bench_artifact(model, load_dataset(_npz(tmp_path)), calls=30, batch=8)
    assert result.batch == 1 and result.throughput_per_s > 0 and result.latency_p50_ms > 0


def test_compile_request_stamps_batched_inputs(tmp_path: Path, model: Path) -> None:
    stamped = stamp_batched_inputs(model, "", tmp_path / "stamped.onnx")
    assert OnnxRuntime(stamped).signature.batched_inputs == ()
    again = stamp_batched_inputs(stamped, "x", tmp_path / "again.onnx")
    assert OnnxRuntime(again).signature.batched_inputs == ("x",)
    with pytest.raises(InputError, match=r"names \['y'\], which are not inputs"):
        stamp_batched_inputs(model, "x,y", tmp_path / "bad.onnx")
    with pytest.raises(InputError, match="0-d inputs"):
        stamp_batched_inputs(model, "sr", tmp_path / "bad.onnx")
    with pytest.raises(InputError, match=r"not an \.onnx model"):
        stamp_batched_inputs(tmp_path / "m.tflite", "x", tmp_path / "bad.onnx")


def test_build_chooses_an_artifact_for_a_stateful_model(
    tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole `build` (smoothing's activation capture, calibration, batch-1 quality) feeds a model
    with a recurrent state and a 0-d sample rate one complete sample per call (it used to stop in
    the SmoothQuant pass with onnxruntime's "Required inputs (['sr']) are missing")."""
    import json

    from compiler.cli import main

    calib = _npz(tmp_path, n=32)
    with np.load(calib) as z:
        arrays = dict(z)
    evalset = tmp_path / "eval.npz"
    np.savez(evalset, **arrays, y=(np.arange(32) % 2).astype(np.int64))
    out = tmp_path / "out"
    argv = ["build", "--json", "--model", str(model), "--profile", "raspberry-pi-4"]
    code = main([*argv, "--calib", str(calib), "--eval", str(evalset), "--out", str(out)])
    result = json.loads(capsys.readouterr().out)
    assert code == 0, result
    chosen = result["chosen"]["raspberry-pi-4"]
    assert (out / chosen["path"]).is_file()
    report = json.loads((out / "report.json").read_text())
    assert report["profiles"]["raspberry-pi-4"]["candidates"], report
