"""Each pass on the real digits CNN: export, ONNX checks, quantization, TFLite, pruning, distillation,
inspection. Real models and runtimes, no mocks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from compiler import measure
from compiler.data import Dataset, from_arrays
from compiler.errors import InputError, UnsupportedError
from compiler.inspect import inspect_model
from compiler.passes import convert_tflite, distill, export, prune, quantize
from compiler.quality import classification

DIGITS_MACS = 16 * 64 * 9 + 32 * 64 * 16 * 9 + 512 * 64 + 64 * 10  # conv1, conv2, fc1, fc2 per sample


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory: pytest.TempPathFactory, digits_model: Any, train_set: Dataset) -> Path:
    return export.export_onnx(digits_model, train_set.inputs, tmp_path_factory.mktemp("exp") / "fp32.onnx")


def _torch_logits(model: Any, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return np.asarray(model(torch.from_numpy(x)).numpy())


def test_export_is_one_file_with_a_dynamic_batch_matching_torch(
    fp32_onnx: Path, digits_model: Any, eval_set: Dataset
) -> None:
    assert not list(fp32_onnx.parent.glob("*.data"))  # no external data
    assert export.onnx_input_specs(fp32_onnx) == {"input": (("batch", 1, 8, 8), "float32")}
    runner = measure.open_runtime(fp32_onnx, "onnxruntime", 1)
    x = eval_set.inputs["input"][:7]
    np.testing.assert_allclose(runner.run({"input": x}), _torch_logits(digits_model, x), atol=1e-4)
    assert onnx.load(str(fp32_onnx)).opset_import[0].version == export.OPSET


def test_export_needs_two_samples(digits_model: Any, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="at least 2 samples"):
        export.export_onnx(digits_model, {"input": np.zeros((1, 1, 8, 8), np.float32)}, tmp_path / "m.onnx")


def test_check_onnx_rejects_corrupt_files_and_lists_unsupported_ops(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 50)
    with pytest.raises(InputError, match="not a valid ONNX model"):
        export.check_onnx(bad)
    node_a = helper.make_node("FancyWarp", ["x"], ["y"], domain="acme.vision")
    node_b = helper.make_node("Relu", ["y"], ["z"])
    graph = helper.make_graph(
        [node_a, node_b],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("acme.vision", 1)]
    )
    custom = tmp_path / "custom.onnx"
    onnx.save(model, str(custom))
    with pytest.raises(UnsupportedError, match=r"acme\.vision::FancyWarp"):
        export.check_onnx(custom)


def test_resolve_source_classifies_inputs(tmp_path: Path) -> None:
    assert export.resolve_source("tests.fixtures.digits:make_digits_cnn").kind == "factory"
    with pytest.raises(InputError, match="not found"):
        export.resolve_source(str(tmp_path / "nope.onnx"))
    with pytest.raises(InputError, match="expected"):
        export.resolve_source("just words")
    with pytest.raises(InputError, match="cannot load model"):
        export.load_torch_model(export.resolve_source("tests.fixtures.nothing_here:make"))


def test_static_qdq_is_smaller_and_keeps_accuracy(
    fp32_onnx: Path, train_set: Dataset, eval_set: Dataset
) -> None:
    ref = measure.predict(measure.open_runtime(fp32_onnx, "onnxruntime", 1), eval_set.inputs)
    for method in ("minmax", "entropy", "percentile"):
        out = quantize.quantize_static(
            fp32_onnx, fp32_onnx.parent / f"{method}.onnx", train_set.head(128), method=method
        )
        ops = inspect_model(out).ops
        assert ops.get("QuantizeLinear", 0) > 0
        assert ops.get("DequantizeLinear", 0) > 0
        assert out.stat().st_size < 0.35 * fp32_onnx.stat().st_size
        got = measure.predict(measure.open_runtime(out, "onnxruntime", 1), eval_set.inputs)
        q, r = classification(got, ref, eval_set.labels), classification(ref, ref, eval_set.labels)
        assert q.accuracy is not None
        assert r.accuracy is not None
        assert r.accuracy - q.accuracy <= 0.01, method
    with pytest.raises(InputError, match="calibration method"):
        quantize.quantize_static(fp32_onnx, fp32_onnx.parent / "x.onnx", train_set, method="magic")


def test_dynamic_quantization_and_node_exclusion(fp32_onnx: Path, eval_set: Dataset) -> None:
    dyn = quantize.quantize_dynamic(fp32_onnx, fp32_onnx.parent / "dyn.onnx")
    assert inspect_model(dyn).ops.get("ConvInteger") == 2
    pre = quantize.preprocess(fp32_onnx, fp32_onnx.parent / "pre.onnx")
    nodes = quantize.weighted_nodes(pre)
    assert len(nodes) == 4
    ranked = quantize.rank_sensitive_nodes(pre, dyn, eval_set)
    assert sorted(n for n, _ in ranked) == sorted(nodes)
    part = quantize.quantize_dynamic(fp32_onnx, fp32_onnx.parent / "part.onnx", exclude=nodes[:2])
    assert inspect_model(part).ops.get("ConvInteger", 0) == 0  # both convs kept in float
    assert inspect_model(part).ops.get("Conv") == 2


def test_tflite_fp32_dynamic_and_full_int8(
    digits_model: Any, train_set: Dataset, eval_set: Dataset, tmp_path: Path
) -> None:
    fp32 = convert_tflite.convert_fp32(digits_model, train_set.inputs, tmp_path / "fp32.tflite")
    full = convert_tflite.quantize_tflite(fp32, tmp_path / "full.tflite", "full", train_set.head(64))
    dyn = convert_tflite.quantize_tflite(fp32, tmp_path / "dyn.tflite", "dynamic")
    ref = _torch_logits(digits_model, eval_set.inputs["input"])
    for path in (fp32, full, dyn):
        runner = measure.open_runtime(path, "litert", 1)
        q = classification(measure.predict(runner, eval_set.inputs), ref, eval_set.labels)
        assert q.agreement >= 0.98, path.name
    from ai_edge_litert.interpreter import Interpreter

    detail = Interpreter(str(full)).get_input_details()[0]
    assert np.dtype(detail["dtype"]) == np.int8  # full integer: int8 I/O, as the Edge TPU needs
    assert full.stat().st_size < 0.35 * fp32.stat().st_size
    assert inspect_model(fp32).macs == DIGITS_MACS
    with pytest.raises(InputError, match="calibration"):
        convert_tflite.quantize_tflite(fp32, tmp_path / "x.tflite", "full", None)


def test_inspect_counts_macs_and_params(fp32_onnx: Path) -> None:
    info = inspect_model(fp32_onnx)
    assert info.macs == DIGITS_MACS
    assert info.params == 16 * 9 + 16 + 32 * 16 * 9 + 32 + 512 * 64 + 64 + 640 + 10
    assert info.ops["Conv"] == 2
    with pytest.raises(InputError):
        inspect_model(fp32_onnx.with_suffix(".txt"))


def test_structured_pruning_shrinks_the_network_and_fine_tune_recovers(
    digits_model: Any, train_set: Dataset, eval_set: Dataset
) -> None:
    pruned, report = prune.prune_and_finetune(digits_model, train_set, eval_set, keep=0.5, epochs=8)
    assert report.params_after < 0.3 * report.params_before
    assert report.pruned_layers == ("features.0", "features.2", "head.1")
    assert report.accuracy_finetuned >= report.accuracy_before - 0.02
    assert report.accuracy_finetuned > report.accuracy_pruned
    assert pruned.get_submodule("features.2").out_channels == 16
    with pytest.raises(UnsupportedError, match="no prunable"):
        prune.prune_channels(from_student("make_identity_student"), 0.5)


def from_student(name: str) -> Any:
    return distill.make_student(f"tests.unit.compiler.students:{name}")


def test_distillation_reports_student_alone_and_distilled(
    digits_model: Any, train_set: Dataset, eval_set: Dataset
) -> None:
    small = train_set
    distilled, alone, report = distill.distill(
        digits_model, "tests.unit.compiler.students:make_small_student", small, eval_set, epochs=15
    )
    assert report.student_params < report.teacher_params / 5
    assert 0.8 < report.student_alone_accuracy <= 1
    assert 0.8 < report.distilled_accuracy <= 1
    assert report.distillation_helped == (report.distilled_accuracy > report.student_alone_accuracy)
    assert any(
        (a != b).any()
        for a, b in zip(distilled.state_dict().values(), alone.state_dict().values(), strict=True)
    )
    with pytest.raises(InputError, match="needs labels"):
        distill.distill(
            digits_model,
            "tests.unit.compiler.students:make_small_student",
            from_arrays({"x": small.inputs["input"]}),
            eval_set,
            epochs=1,
        )


def test_unstructured_sparsity_is_reported_honestly(
    digits_model: Any, train_set: Dataset, eval_set: Dataset, tmp_path: Path
) -> None:
    _, rep = prune.unstructured_report(digits_model, train_set, eval_set, tmp_path, amount=0.8, epochs=4)
    assert (
        abs(rep.onnx_bytes_sparse - rep.onnx_bytes_dense) < 0.02 * rep.onnx_bytes_dense
    )  # dense file: same size
    assert rep.xz_bytes_sparse < 0.6 * rep.xz_bytes_dense  # only the compressed download shrinks
    assert rep.accuracy_finetuned >= rep.accuracy_before - 0.03
