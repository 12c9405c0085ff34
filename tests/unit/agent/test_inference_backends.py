"""Both backends on real exported digits models, against the PyTorch reference; registry choices."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from agent.errors import BackendCrashedError, BackendUnavailableError, InvalidInputError, ModelLoadError
from agent.inference.registry import cpu_fallback_for, load_runtime
from agent.inference.signature import validate_inputs
from agent.profile import DeviceProfile, load_profile
from tests.fixtures.models import DigitsModels, digits_models


@pytest.fixture(scope="module")
def models() -> DigitsModels:
    return digits_models()


@pytest.fixture(scope="module")
def x86() -> DeviceProfile:
    return load_profile("generic-x86")


def _predict(path: Path, profile: DeviceProfile, x: np.ndarray) -> np.ndarray:
    runtime = load_runtime(path, profile)
    name = runtime.signature.inputs[0].name
    out = runtime.run({name: x})
    runtime.close()
    return next(iter(out.values()))


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(axis=1) == b.argmax(axis=1)).mean())


@pytest.mark.parametrize("artifact", ["onnx_fp32", "tflite_fp32"])
def test_fp32_backends_match_torch(models: DigitsModels, x86: DeviceProfile, artifact: str) -> None:
    logits = _predict(getattr(models, artifact), x86, models.data.x_test)
    assert logits.shape == models.reference_logits.shape
    assert np.abs(logits - models.reference_logits).max() <= 1e-4
    assert _agreement(logits, models.reference_logits) >= 0.99


@pytest.mark.parametrize("artifact", ["onnx_int8", "tflite_int8"])
def test_int8_backends_agree_with_torch(models: DigitsModels, x86: DeviceProfile, artifact: str) -> None:
    logits = _predict(getattr(models, artifact), x86, models.data.x_test)
    assert logits.dtype == np.float32  # quantized I/O is presented as float32
    assert _agreement(logits, models.reference_logits) >= 0.99
    accuracy = float((logits.argmax(axis=1) == models.data.y_test).mean())
    assert accuracy >= 0.95


def test_signatures_expose_dynamic_batch_and_float_io(models: DigitsModels, x86: DeviceProfile) -> None:
    onnx = load_runtime(models.onnx_fp32, x86)
    tfl = load_runtime(models.tflite_int8, x86)
    assert onnx.signature.describe() == "(input: float32[?, 1, 8, 8]) -> (logits: float32[?, 10])"
    assert tfl.signature.dynamic_batch
    assert tfl.signature.inputs[0].dtype == "float32"
    assert tfl.backend == "litert[xnnpack]"
    assert onnx.backend == "onnxruntime[CPUExecutionProvider]"


def test_absent_execution_provider_is_skipped_with_warning(
    models: DigitsModels, x86: DeviceProfile, caplog: pytest.LogCaptureFixture
) -> None:
    spec = replace(x86.runtime, execution_providers=("TensorrtExecutionProvider", "CPUExecutionProvider"))
    with caplog.at_level(logging.WARNING):
        runtime = load_runtime(models.onnx_fp32, replace(x86, runtime=spec))
    assert runtime.backend == "onnxruntime[CPUExecutionProvider]"
    assert "TensorrtExecutionProvider is not available" in caplog.text


@pytest.mark.parametrize("suffix", [".onnx", ".tflite"])
def test_corrupt_artifact_is_a_model_load_error(tmp_path: Path, x86: DeviceProfile, suffix: str) -> None:
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(b"\x00not a model" * 100)
    with pytest.raises(ModelLoadError, match="cannot load"):
        load_runtime(bad, x86)


def test_missing_and_unsupported_artifacts(tmp_path: Path, x86: DeviceProfile) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_runtime(tmp_path / "nope.onnx", x86)
    (tmp_path / "m.pt").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="unsupported model format"):
        load_runtime(tmp_path / "m.pt", x86)


def _libedgetpu_present() -> bool:
    import ctypes.util

    return ctypes.util.find_library("edgetpu") is not None


@pytest.mark.skipif(_libedgetpu_present(), reason="a real Edge TPU runtime is installed here")
def test_coral_without_libedgetpu_names_what_is_missing(models: DigitsModels, tmp_path: Path) -> None:
    """No Edge TPU on this machine: the delegate is absent (not mocked) and the error says so."""
    coral = load_profile("coral-dev-board")
    tpu = tmp_path / "digits_edgetpu.tflite"
    tpu.write_bytes(models.tflite_int8.read_bytes())
    with pytest.raises(BackendUnavailableError, match=r"libedgetpu\.so\.1"):
        load_runtime(tpu, coral)
    cpu_fallback_for(tpu).write_bytes(models.tflite_int8.read_bytes())
    runtime = load_runtime(tpu, coral)  # falls back to the CPU artifact beside it
    assert runtime.backend == "litert[xnnpack]"


def test_validation_names_the_expected_signature(models: DigitsModels, x86: DeviceProfile) -> None:
    sig = load_runtime(models.onnx_fp32, x86).signature
    expected = "expected signature (input: float32[?, 1, 8, 8]) -> (logits: float32[?, 10])"
    cases = {
        "dtype float64": {"input": np.zeros((1, 1, 8, 8), np.float64)},
        "dim 2 must be 8": {"input": np.zeros((1, 1, 9, 8), np.float32)},
        "expected rank 4": {"input": np.zeros((1, 8, 8), np.float32)},
        "inputs \\['x'\\] given": {"x": np.zeros((1, 1, 8, 8), np.float32)},
        "exceeds the limit of 4": {"input": np.zeros((5, 1, 8, 8), np.float32)},
    }
    for problem, inputs in cases.items():
        with pytest.raises(InvalidInputError, match=problem) as info:
            validate_inputs(sig, inputs, max_batch=4)
        assert expected in str(info.value)
    assert validate_inputs(sig, {"input": np.zeros((3, 1, 8, 8), np.float32)}, max_batch=4) == 3


def test_agent_serving_path_never_imports_litert_or_torch(models: DigitsModels) -> None:
    code = (
        "import sys; from pathlib import Path\n"
        "from agent.inference.registry import load_runtime\n"
        "import agent.serving, agent.client, agent.inference.cli, agent.slots\n"
        "from agent.profile import load_profile\n"
        f"load_runtime(Path({str(models.onnx_fp32)!r}), load_profile('generic-x86'))\n"
        "heavy = ('torch', 'ai_edge_litert', 'tflite_runtime', 'fastapi', 'flwr')\n"
        "bad = [m for m in heavy if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[3])


@pytest.mark.parametrize("artifact", ["onnx_fp32", "onnx_int8", "tflite_fp32", "tflite_int8"])
def test_runtime_port_contract(models: DigitsModels, x86: DeviceProfile, artifact: str) -> None:
    """What every `InferenceRuntime` adapter promises the serving layer."""
    runtime = load_runtime(getattr(models, artifact), x86)
    sig = runtime.signature
    assert sig.dynamic_batch  # static-batch LiteRT models are run per sample behind the port
    x = models.data.x_test[:3]
    outputs = runtime.run({sig.inputs[0].name: x})
    assert list(outputs) == [s.name for s in sig.outputs]
    for spec in sig.outputs:
        assert outputs[spec.name].dtype == np.dtype(spec.dtype)
        assert outputs[spec.name].shape == (3, *spec.shape[1:])
    threads = [threading.Thread(target=runtime.run, args=({sig.inputs[0].name: x},)) for _ in range(4)]
    for t in threads:  # concurrent calls are allowed
        t.start()
    for t in threads:
        t.join()
    runtime.close()
    with pytest.raises(BackendCrashedError):
        runtime.run({sig.inputs[0].name: x})
