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

from agent.errors import (
    BackendCrashedError,
    BackendUnavailableError,
    ConfigError,
    InvalidInputError,
    ModelLoadError,
)
from agent.inference.onnx_backend import AUTO_PROBE_CAP_S, AUTO_PROBE_RUNS, OnnxRuntime
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
    assert onnx.backend.startswith("onnxruntime[CPUExecutionProvider] threads=")


def test_absent_execution_provider_is_skipped_with_warning(
    models: DigitsModels, x86: DeviceProfile, caplog: pytest.LogCaptureFixture
) -> None:
    spec = replace(x86.runtime, execution_providers=("TensorrtExecutionProvider", "CPUExecutionProvider"))
    with caplog.at_level(logging.WARNING):
        runtime = load_runtime(models.onnx_fp32, replace(x86, runtime=spec))
    assert runtime.backend.startswith("onnxruntime[CPUExecutionProvider] threads=")
    assert "TensorrtExecutionProvider is not available" in caplog.text


class _Clock:
    """A fake `perf_counter`: each timed call takes `step` s, `later` s from the (after+1)-th call on."""

    def __init__(self, step: float, later: float | None = None, after: int = 0) -> None:
        self.step, self.later, self.after = step, later, after
        self.now, self.reads = 0.0, 0

    def __call__(self) -> float:
        late = self.later is not None and self.reads >= 2 * self.after
        self.reads += 1
        self.now += (self.later if late else self.step) / 2  # type: ignore[operator]
        return self.now


def _threads_of(session: object) -> int:
    options = session.get_session_options()  # type: ignore[attr-defined]
    return int(options.intra_op_num_threads)


@pytest.mark.parametrize(
    ("clock", "expected"),
    [
        (_Clock(50e-6), 1),  # cheap, as fast on one thread
        (_Clock(500e-6, later=400e-6, after=AUTO_PROBE_RUNS), 1),  # faster on one thread
        (_Clock(500e-6, later=600e-6, after=AUTO_PROBE_RUNS), 2),  # 20% slower on one thread
        (_Clock(5e-3), 2),  # over the cap: never timed on one thread
    ],
    ids=["cheap-tie", "cheap-one-faster", "cheap-two-faster", "over-cap"],
)
def test_auto_threads_keep_the_faster_count_under_the_cap(
    models: DigitsModels, clock: _Clock, expected: int
) -> None:
    assert AUTO_PROBE_CAP_S == 1e-3  # the fake costs sit on either side of it
    runtime = OnnxRuntime(models.onnx_fp32, threads=2, clock=clock)
    assert runtime.threads == expected
    assert _threads_of(runtime._session) == expected
    assert runtime.backend == f"onnxruntime[CPUExecutionProvider] threads={expected}"
    timed_sessions = 1 if clock.step >= AUTO_PROBE_CAP_S else 2
    assert clock.reads == 2 * AUTO_PROBE_RUNS * timed_sessions
    x = models.data.x_test[:4]
    assert np.abs(runtime.run({"input": x})["logits"] - models.reference_logits[:4]).max() <= 1e-4


def test_auto_threads_use_the_given_cap(models: DigitsModels) -> None:
    assert OnnxRuntime(models.onnx_int8, threads=4, clock=_Clock(10e-3), probe_cap_s=20e-3).threads == 1
    assert OnnxRuntime(models.onnx_int8, threads=4, clock=_Clock(10e-3), probe_cap_s=5e-3).threads == 4


def test_profile_pin_and_single_thread_profiles_skip_the_probe(
    models: DigitsModels, x86: DeviceProfile, tmp_path: Path
) -> None:
    never = _Clock(float("nan"))  # a probe would have to read it: count the reads
    assert OnnxRuntime(models.onnx_fp32, threads=2, auto_threads=False, clock=never).threads == 2
    assert OnnxRuntime(models.onnx_fp32, threads=1, clock=never).threads == 1
    assert never.now == 0.0
    text = (Path(__file__).parents[3] / "firmware_images" / "generic-x86.toml").read_text()
    assert "threads = 2" in text and "threads_auto" not in text
    (tmp_path / "pinned.toml").write_text(text.replace("threads = 2", "threads = 2\nthreads_auto = false"))
    pinned = load_profile("pinned", tmp_path)
    assert x86.runtime.threads_auto and not pinned.runtime.threads_auto
    runtime = load_runtime(models.onnx_fp32, pinned)
    assert runtime.backend == "onnxruntime[CPUExecutionProvider] threads=2"
    (tmp_path / "bad.toml").write_text(text.replace("threads = 2", 'threads = 2\nthreads_auto = "no"'))
    with pytest.raises(ConfigError, match=r"runtime\.threads_auto"):
        load_profile("bad", tmp_path)


def _tiny_model(path: Path, op: str, dtype: int, shape: list[str | int]) -> Path:
    import onnx
    from onnx import helper

    graph = helper.make_graph(
        [helper.make_node(op, ["a", "b"], ["y"])],
        op.lower(),
        [helper.make_tensor_value_info(n, dtype, shape) for n in ("a", "b")],
        [helper.make_tensor_value_info("y", dtype, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_free_input_sizes_keep_the_profiles_threads_unprobed(tmp_path: Path) -> None:
    """A free sequence length would be timed at 1 on zeros (MiniLM: ~0.2 ms there, ~5 ms served)."""
    from onnx import TensorProto

    clock = _Clock(1e-6)
    free = _tiny_model(tmp_path / "seq.onnx", "Add", TensorProto.FLOAT, ["batch", "seq"])
    assert OnnxRuntime(free, threads=2, clock=clock).threads == 2
    assert clock.reads == 0
    fixed = _tiny_model(tmp_path / "fixed.onnx", "Add", TensorProto.FLOAT, ["batch", 64])
    assert OnnxRuntime(fixed, threads=2, clock=clock).threads == 1
    assert clock.reads == 4 * AUTO_PROBE_RUNS


def test_a_failing_probe_keeps_the_profiles_threads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Zeros a model cannot take (here: a divisor input, 1/0 in int64) leave the threads alone."""
    from onnx import TensorProto

    _tiny_model(tmp_path / "div.onnx", "Div", TensorProto.INT64, ["n"])
    with caplog.at_level(logging.INFO):
        runtime = OnnxRuntime(tmp_path / "div.onnx", threads=2, clock=_Clock(1e-6))
    assert runtime.threads == 2
    assert "thread probe on zeros failed" in caplog.text


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
