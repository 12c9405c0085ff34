"""`quantize` as a checked operation: quantize, say what changed, measure the damage, refuse or write.

Owns the `edgeloop-compile quantize` run: the int8 file is built next to `--out`, compared with the
input (`compiler.effect`: nodes quantized, nodes left in float and where, size delta) and, when there
is data (`--eval`, else the calibration set), run against the fp32 model at batch 1 (the batch a
device serves) for the quality numbers with their 95 % intervals. Only a file that did something and
kept quality inside the budget is moved to `--out`; otherwise nothing is written and the error says
what was measured:

- nothing quantized or the file grew -> `NoEffectError` (exit 53), unless `allow_noop`;
- quality past the budget -> `BudgetError` (exit 52) with the measured drop.

Without any data the quality is not checked, and the result says so in `warnings`. Does not choose
recipes (that is `build`).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from compiler import measure, quality
from compiler.data import Dataset, check_against, load_dataset
from compiler.effect import effect_problems, quant_effect
from compiler.errors import BudgetError, InputError, NoEffectError
from compiler.passes import export, quantize
from compiler.pipeline import QualityBudget

MAX_EVAL_SAMPLES = 2000  # batch-1 runs of both models: bounded


@dataclass(frozen=True)
class QuantizeRequest:
    model: Path
    out: Path
    mode: str = "static"  # static | dynamic
    calib: Path | None = None
    evaluation: Path | None = None
    method: str = "minmax"
    per_channel: bool = True
    exclude: tuple[str, ...] = ()
    budget: QualityBudget = field(default_factory=lambda: QualityBudget(min_agreement=0.95))
    allow_noop: bool = False
    task: str | None = None


def quantize_file(req: QuantizeRequest) -> dict[str, Any]:
    """Quantize `req.model` into `req.out` if the result is worth having; return what was measured.

    Raises:
        InputError: unusable model or data; static mode without calibration data.
        UnsupportedError: onnxruntime could not quantize the graph.
        NoEffectError: nothing was quantized or the file grew (and `allow_noop` is off).
        BudgetError: quality vs the fp32 model fell past `req.budget`.
    """
    export.check_onnx(req.model)
    specs = export.onnx_input_specs(req.model)
    calib = check_against(load_dataset(req.calib), specs, "calibration") if req.calib else None
    if req.mode == "static" and calib is None:
        raise InputError("static quantization needs --calib")
    data = check_against(load_dataset(req.evaluation), specs, "evaluation") if req.evaluation else calib
    req.out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{req.out.name}.", suffix=".onnx", dir=req.out.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        result = _quantize_and_check(req, tmp, calib, data)
        os.replace(tmp, req.out)
    finally:
        tmp.unlink(missing_ok=True)
    return result


def _quantize_and_check(
    req: QuantizeRequest, tmp: Path, calib: Dataset | None, data: Dataset | None
) -> dict[str, Any]:
    if req.mode == "dynamic":
        quantize.quantize_dynamic(req.model, tmp, per_channel=req.per_channel, exclude=req.exclude)
    elif req.mode == "static" and calib is not None:
        quantize.quantize_static(
            req.model, tmp, calib, method=req.method, per_channel=req.per_channel, exclude=req.exclude
        )
    else:
        raise InputError(f"unknown quantization mode {req.mode!r} (static | dynamic)")
    effect = quant_effect(req.model, tmp)
    problems = effect_problems(effect)
    doc: dict[str, Any] = {
        "out": str(req.out),
        "mode": req.mode,
        "size_bytes": effect.size_after,
        "effect": effect.as_dict(),
        "quality": None,
        "warnings": [],
    }
    if problems and not req.allow_noop:
        raise NoEffectError(
            "quantization refused: " + "; ".join(problems) + " (nothing written; --allow-noop writes it)",
            details=doc,
        )
    doc["warnings"] += problems
    if data is None:
        doc["warnings"].append("quality not checked: give --eval (or --calib) data to compare with fp32")
        return doc
    q, task, ref_acc = _compare(req.model, tmp, data.head(MAX_EVAL_SAMPLES), req.task)
    doc["quality"] = {
        "task": task,
        "batch": 1,
        "budget": asdict(req.budget),
        "reference_accuracy": ref_acc,
        **_quality_doc(q),
    }
    failures = quality_failures(q, req.budget, ref_acc)
    if failures:
        raise BudgetError(
            "quantization refused: quality vs the fp32 model fell past the budget: "
            + "; ".join(failures)
            + " (nothing written)",
            details=doc,
        )
    return doc


def _compare(
    fp32: Path, quant: Path, data: Dataset, task: str | None
) -> tuple[quality.Quality, str, float | None]:
    """Both models on onnxruntime, one thread, batch 1 (what a device serves); + fp32's accuracy."""
    ref = measure.predict(measure.open_runtime(fp32, "onnxruntime", 1), data, batch_size=1)
    got = measure.predict(measure.open_runtime(quant, "onnxruntime", 1), data, batch_size=1)
    task = task or quality.infer_task(ref, data.labels)
    ref_acc = quality.evaluate(ref, ref, data.labels, task).accuracy
    return quality.evaluate(got, ref, data.labels, task), task, ref_acc


def quality_failures(
    q: quality.Quality, budget: QualityBudget, reference_accuracy: float | None = None
) -> list[str]:
    """Every quality budget `q` breaks, with the measured value and its 95 % interval."""
    out = []
    ref_acc = reference_accuracy
    if q.accuracy is not None and ref_acc is not None and ref_acc - q.accuracy > budget.max_accuracy_drop:
        out.append(
            f"accuracy {q.accuracy:.4f} is {ref_acc - q.accuracy:.4f} below fp32's {ref_acc:.4f} "
            f"(allowed {budget.max_accuracy_drop:.4f})"
        )
    if q.cosine_mean is not None and q.cosine_mean < budget.min_cosine:
        out.append(f"mean cosine {q.cosine_mean:.4f} < {budget.min_cosine:.4f}")
    if q.agreement < budget.min_agreement:
        lo, hi = q.agreement_interval or (0.0, 1.0)
        out.append(
            f"agreement with fp32 {q.agreement:.4f} (95% {lo:.3f}-{hi:.3f}, n={q.samples}) < "
            f"{budget.min_agreement:.4f}; mean |output difference| {q.mean_abs_diff:.4g}"
        )
    return out


def _quality_doc(q: quality.Quality) -> dict[str, Any]:
    return {k: v for k, v in asdict(q).items() if v is not None}
