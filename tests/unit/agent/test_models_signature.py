"""Issue 17: which inputs are batched (shapes, symbolic names, model metadata), validation of only the
batched inputs' batch, the micro-batcher's guard for stateful models, warm-up inputs, profile custom ops."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from agent.errors import InvalidInputError, ModelLoadError
from agent.inference.batching import MicroBatcher
from agent.inference.handle import ModelHandle, ModelMeta
from agent.inference.onnx_backend import OnnxRuntime
from agent.inference.signature import (
    BATCHED_INPUTS_KEY,
    Signature,
    TensorSpec,
    declare_batched,
    infer_batched,
    validate_inputs,
)
from agent.inference.warmup import parse_sample, sample_bytes, zeros_for
from agent.profile import load_profile
from tests.fixtures.stateful import build_stateful_onnx, initial_state


def _spec(name: str, shape: tuple[int | None, ...], dtype: str = "float32") -> TensorSpec:
    return TensorSpec(name, dtype, shape)


def test_shapes_decide_batched_inputs() -> None:
    specs = [_spec("x", (None, 16)), _spec("state", (2, None, 8)), _spec("sr", (), "int64")]
    assert infer_batched(specs) == {"x"}  # fixed first axis and 0-d are not the batch
    # two dynamic first axes with different symbols: the one named like a batch wins
    two = [_spec("x", (None, 16)), _spec("h", (None, 8))]
    assert infer_batched(two, {"x": "batch_size", "h": "layers"}) == {"x"}
    assert infer_batched(two, {"x": "N", "h": "N"}) == {"x", "h"}
    assert infer_batched(two, {"x": "seq", "h": "seq", **{}}) == {"x", "h"}
    three = [*two, _spec("y", (None, 2))]
    assert infer_batched(three, {"x": "p", "h": "q", "y": "p"}) == {"x", "y"}  # the most common symbol
    assert infer_batched(two, {"x": None, "h": None}) == {"x", "h"}


def test_only_batched_inputs_must_agree_on_the_batch() -> None:
    sig = Signature(
        inputs=declare_batched(
            [_spec("x", (None, 16)), _spec("state", (2, None, 8)), _spec("sr", (), "int64")]
        ),
        outputs=(_spec("prob", (None, 1)),),
    )
    ok = {"x": np.zeros((1, 16), np.float32), "state": initial_state(1), "sr": np.array(16000)}
    assert validate_inputs(sig, ok) == 1
    assert sig.stateful and not sig.dynamic_batch and sig.batched_inputs == ("x",)
    assert "state: float32[2, ?, 8] (not batched)" in sig.describe()
    with pytest.raises(InvalidInputError, match="dim 0 must be 2"):
        validate_inputs(sig, {**ok, "state": np.zeros((1, 1, 8), np.float32)})
    two = Signature(inputs=declare_batched([_spec("a", (None, 2)), _spec("b", (None, 3))]), outputs=())
    with pytest.raises(InvalidInputError, match=r"batched inputs disagree on the batch size: \['a'\] have 1"):
        validate_inputs(two, {"a": np.zeros((1, 2), np.float32), "b": np.zeros((2, 3), np.float32)})
    scalar_only = Signature(inputs=declare_batched([_spec("sr", (), "int64")]), outputs=())
    assert validate_inputs(scalar_only, {"sr": np.array(1)}) == 1


def test_onnx_metadata_overrides_the_shapes(tmp_path: Path) -> None:
    plain = OnnxRuntime(build_stateful_onnx(tmp_path / "a.onnx"))
    assert plain.signature.batched_inputs == ("x",)
    none = OnnxRuntime(build_stateful_onnx(tmp_path / "b.onnx", metadata={BATCHED_INPUTS_KEY: ""}))
    assert none.signature.batched_inputs == ()
    both = OnnxRuntime(build_stateful_onnx(tmp_path / "c.onnx", metadata={BATCHED_INPUTS_KEY: "x, state"}))
    assert both.signature.batched_inputs == ("x", "state")
    with pytest.raises(ModelLoadError, match=r"names \['nope'\], which are not inputs"):
        OnnxRuntime(build_stateful_onnx(tmp_path / "d.onnx", metadata={BATCHED_INPUTS_KEY: "x,nope"}))
    with pytest.raises(ModelLoadError, match=r"0-d inputs \['sr'\] cannot be batched"):
        OnnxRuntime(build_stateful_onnx(tmp_path / "e.onnx", metadata={BATCHED_INPUTS_KEY: "sr"}))


def test_tflite_metadata_overrides_batch_one_emulation(tmp_path: Path) -> None:
    from ai_edge_litert import schema_py_generated as schema
    from flatbuffers import Builder

    from agent.inference.tflite_backend import TfliteRuntime
    from agent.inference.tflite_meta import read_metadata
    from tests.fixtures.models import digits_models

    source = digits_models().tflite_fp32
    assert TfliteRuntime(source).signature.dynamic_batch  # batch-1 file emulated as batched
    model = schema.ModelT.InitFromPackedBuf(source.read_bytes(), 0)
    buffer = schema.BufferT()
    buffer.data = list(b"")  # no input is batched
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = BATCHED_INPUTS_KEY, len(model.buffers) - 1
    model.metadata.append(entry)
    builder = Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path = tmp_path / "declared.tflite"
    path.write_bytes(bytes(builder.Output()))
    assert read_metadata(path)[BATCHED_INPUTS_KEY] == b""
    runtime = TfliteRuntime(path)
    assert runtime.signature.batched_inputs == () and not runtime.signature.dynamic_batch
    assert runtime.signature.inputs[0].shape == (1, 1, 8, 8)
    assert read_metadata(tmp_path / "missing.tflite") == {}


class _Recorder:
    """A stateful runtime that records each call's inputs."""

    def __init__(self) -> None:
        self.calls: list[dict[str, np.ndarray]] = []
        self.signature = Signature(
            inputs=declare_batched([_spec("x", (None, 4)), _spec("state", (2, None, 4))]), outputs=()
        )
        self.backend = "fake"

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls.append(dict(inputs))
        return {"y": inputs["x"] + inputs["state"][0]}

    def close(self) -> None:
        pass


def test_micro_batcher_never_joins_requests_of_a_stateful_model() -> None:
    runtime = _Recorder()
    handle = ModelHandle(runtime, ModelMeta("m", "1", "current", Path("m.onnx")))

    async def scenario() -> list[dict[str, np.ndarray]]:
        async def run(h: ModelHandle, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return h.runtime.run(arrays)

        batcher = MicroBatcher(run, max_batch=32, max_wait_s=0.01)
        batcher.start()
        try:
            requests = [
                {"x": np.full((1, 4), k, np.float32), "state": np.full((2, 1, 4), 10 * k, np.float32)}
                for k in range(3)
            ]
            return list(await asyncio.gather(*(batcher.submit(handle, r, 1) for r in requests)))
        finally:
            await batcher.stop()

    results = asyncio.run(scenario())
    assert len(runtime.calls) == 3  # one call per caller, never one joined call
    for k, out in enumerate(results):
        np.testing.assert_array_equal(out["y"], np.full((1, 4), 11 * k, np.float32))


def test_warm_up_inputs() -> None:
    sig = Signature(
        inputs=declare_batched(
            [_spec("x", (None, 16)), _spec("state", (2, None, 8)), _spec("sr", (), "int64")]
        ),
        outputs=(),
    )
    zeros = zeros_for(sig)
    assert {k: v.shape for k, v in zeros.items()} == {"x": (1, 16), "state": (2, 1, 8), "sr": ()}
    sample = {"x": np.ones((1, 16), np.float32), "sr": np.array(16000)}
    assert {k: v.tolist() for k, v in parse_sample(sample_bytes(sample)).items()} == {
        k: v.tolist() for k, v in sample.items()
    }
    with pytest.raises(InvalidInputError, match=r"not a readable \.npz"):
        parse_sample(b"not an npz")


def test_profile_custom_ops_resolve_against_the_profile_folder(tmp_path: Path) -> None:
    base = (Path(__file__).resolve().parents[3] / "firmware_images" / "generic-x86.toml").read_text()
    text = base.replace('name = "generic-x86"', 'name = "box"').replace(
        "[quantization]",
        '[runtime.custom_ops]\nonnxruntime = ["lib/a.so", "/opt/b.so"]\n'
        'litert = [{ library = "lib/t.so", registerers = ["RegA", "RegB"] }]\n\n[quantization]',
    )
    (tmp_path / "box.toml").write_text(text)
    runtime = load_profile("box", tmp_path).runtime
    assert runtime.onnx_custom_op_libraries == (str(tmp_path / "box" / "lib" / "a.so"), "/opt/b.so")
    assert runtime.litert_custom_ops[0].library == str(tmp_path / "box" / "lib" / "t.so")
    assert runtime.litert_custom_ops[0].registerers == ("RegA", "RegB")
    assert load_profile("generic-x86").runtime.onnx_custom_op_libraries == ()


def test_a_state_axis_named_like_the_batch_must_match_it(tmp_path: Path) -> None:
    """state is [2, batch, 8]: its axis 1 follows the batch, so a mismatch is the caller's error (not a
    runtime failure that would restart the backend)."""
    sig = OnnxRuntime(build_stateful_onnx(tmp_path / "a.onnx")).signature
    x = np.zeros((1, 16), np.float32)
    assert validate_inputs(sig, {"x": x, "state": initial_state(1), "sr": np.array(16000)}) == 1
    with pytest.raises(InvalidInputError, match=r"'state' has 2 at axis 1, the batch axis \('batch'\)"):
        validate_inputs(sig, {"x": x, "state": initial_state(2), "sr": np.array(16000)})
