"""`build`: model + profiles + data -> one validated artifact per profile, report and model card.

Owns the build run end to end: resolving inputs (profiles first, so an unknown profile fails before
any work), export to ONNX, data/shape checks, the batches each profile's quality is judged at
(batch 1, plus a micro-batch size: the request's `micro_batch` when given, else the profile's
``[serving] micro_batch``), the per-profile search, the validation gate, and the atomic output:
everything is written into a temp folder next to `out` and renamed into place only when every
profile has an artifact inside its budgets. A failed run leaves nothing behind.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import ConfigError
from agent.profile import DeviceProfile, load_profile
from compiler import pipeline, quality, report
from compiler.data import Dataset, check_against, file_digest, load_dataset
from compiler.errors import BudgetError, InputError, UnsupportedError
from compiler.passes import export
from compiler.toolchain import LocalToolchain, Target

MIN_DRIFT_BUDGET, MAX_DRIFT_BUDGET = 0.01, 100.0  # false drift episodes per 10,000 samples


@dataclass(frozen=True)
class BuildRequest:
    """Everything `build` needs; paths are not read until `build` runs."""

    model: str
    profiles: tuple[str, ...]
    calib: Path
    evaluation: Path
    out: Path
    weights: Path | None = None
    quality: pipeline.QualityBudget = field(default_factory=pipeline.QualityBudget)
    latency_tolerance: float = 0.25
    prefer_recipes: dict[str, str] = field(default_factory=dict)  # profile -> recipe of an earlier version
    all_runtimes: bool = False
    calib_samples: int = 256
    latency_calls: int = 200
    # Also judge quality at this batch (the devices micro-batch); overrides every profile's own
    # `[serving] micro_batch`; 1: batch 1 only, whatever the profiles say; None: each profile's own.
    micro_batch: int | None = None
    latency_clock: str = "cpu"  # judge the p95 budget on thread CPU time ("cpu") or wall time
    # The drift reference's false-alarm budget: expected false drift episodes per 10,000 monitored
    # samples the device's thresholds are calibrated to; None: the monitor's default.
    drift_budget_per_10k: float | None = None
    force: bool = False
    task: str | None = None  # classification | embedding; inferred when None


def load_profiles(names: tuple[str, ...]) -> list[DeviceProfile]:
    """Load device profiles by name.

    Raises:
        InputError: an unknown or invalid profile (the message lists the known ones).
    """
    if not names:
        raise InputError("at least one --profile is needed")
    try:
        return [load_profile(n) for n in names]
    except ConfigError as err:
        raise InputError(str(err)) from err


def quality_batch(request: BuildRequest, profile: DeviceProfile) -> dict[str, Any]:
    """The batches `profile`'s candidates are judged at, and where the micro-batch size came from.

    ``{"serve": 1, "micro_batch": N | None, "source": "request" | "profile" | None}``: the
    request's `micro_batch` (``--micro-batch``) wins over the profile's ``[serving] micro_batch``;
    a micro-batch of 1 is batch 1 only (``micro_batch`` None, ``source`` says who decided it).
    """
    if request.micro_batch is not None:
        size, source = request.micro_batch, "request"
    elif profile.micro_batch is not None:
        size, source = profile.micro_batch, "profile"
    else:
        size, source = None, None
    return {"serve": 1, "micro_batch": size if size and size > 1 else None, "source": source}


def build(request: BuildRequest, on_event: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Run the build; return the report (also written to `out/report.json`).

    Raises:
        InputError: unusable model, data or profile; `out` exists and is not empty (without force).
        UnsupportedError: the model cannot be exported/converted/run for a profile.
        BudgetError: some profile has no candidate inside its budgets (nothing is written).
    """
    profiles = load_profiles(request.profiles)
    if request.latency_clock not in pipeline.CLOCKS:
        raise InputError(f"latency clock {request.latency_clock!r}; choose one of {pipeline.CLOCKS}")
    budget = request.drift_budget_per_10k
    if budget is not None and not (MIN_DRIFT_BUDGET <= budget <= MAX_DRIFT_BUDGET):
        raise InputError(
            f"drift budget {budget}: give {MIN_DRIFT_BUDGET} to {MAX_DRIFT_BUDGET} false drift episodes "
            "per 10,000 samples"
        )
    if request.micro_batch is not None and request.micro_batch < 1:
        raise InputError(
            f"micro-batch {request.micro_batch}: give 2 or more, or 1 for batch 1 only "
            "(batch 1 is always measured)"
        )
    out = request.out.resolve()
    if out.exists() and any(out.iterdir()) and not request.force:
        raise InputError(f"{out} exists and is not empty (use --force to replace it)")
    source = export.resolve_source(request.model, request.weights)
    calib, evaluation = load_dataset(request.calib), load_dataset(request.evaluation)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        result = _build_into(
            staging,
            request,
            profiles,
            source=source,
            calib=calib.head(request.calib_samples),
            evaluation=evaluation,
            on_event=on_event,
        )
        _replace_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result


def _build_into(
    staging: Path,
    request: BuildRequest,
    profiles: list[DeviceProfile],
    *,
    source: export.ModelSource,
    calib: Dataset,
    evaluation: Dataset,
    on_event: Callable[[str], None],
) -> dict[str, Any]:
    work = staging / "work"
    work.mkdir()
    on_event("exporting to ONNX")
    fp32, model = _fp32_onnx(source, calib, work)
    specs = export.onnx_input_specs(fp32)
    calib = check_against(calib, specs, "calibration")
    evaluation = check_against(evaluation, specs, "evaluation")
    tc = LocalToolchain(
        work,
        fp32,
        calib,
        evaluation,
        task="?",
        torch_model=model,
        latency_calls=request.latency_calls,
    )
    tc.task = request.task or quality.infer_task(tc.reference_outputs(), evaluation.labels)
    reference = tc.reference()
    batches = {prof.name: quality_batch(request, prof) for prof in profiles}
    outcomes = [
        _search(prof, tc, reference, request, on_event, micro_batch=batches[prof.name]["micro_batch"])
        for prof in profiles
    ]
    failed = [o for o in outcomes if o.chosen is None]
    if failed:
        raise BudgetError(_budget_message(failed))
    artifacts = {o.profile: _place(o, staging) for o in outcomes}
    lineage = _lineage(request, source, fp32, calib=calib, evaluation=evaluation, task=tc.task)
    doc = report.build_report(
        lineage=lineage, reference=reference, outcomes=outcomes, artifacts=artifacts, quality_batch=batches
    )
    on_event("building the drift reference profile")
    doc["drift_reference"] = _drift_reference(staging, evaluation, tc, source, request.drift_budget_per_10k)
    (staging / "report.json").write_text(json.dumps(doc, indent=2) + "\n")
    (staging / "MODEL_CARD.md").write_text(report.model_card(doc))
    shutil.rmtree(work)
    return doc


def _search(
    prof: DeviceProfile,
    tc: LocalToolchain,
    reference: pipeline.Measurement,
    request: BuildRequest,
    on_event: Callable[[str], None],
    *,
    micro_batch: int | None,
) -> pipeline.Outcome:
    recipes = pipeline.plan(prof, has_torch=tc.torch_model is not None, all_runtimes=request.all_runtimes)
    if not recipes:
        raise UnsupportedError(
            f"profile {prof.name} needs {prof.runtime.preferred} artifacts; converting to them needs a "
            "PyTorch model (litert-torch converts from torch, not from ONNX)"
        )
    view = tc.for_target(Target(prof.runtime.threads, prof.runtime.delegate, micro_batch))
    return pipeline.search(
        prof,
        recipes,
        view,
        reference,
        quality=request.quality,
        latency_tolerance=request.latency_tolerance,
        prefer=request.prefer_recipes.get(prof.name, ""),
        on_event=on_event,
        clock=request.latency_clock,
    )


def _drift_reference(
    staging: Path,
    evaluation: Dataset,
    tc: LocalToolchain,
    source: export.ModelSource,
    budget_per_10k: float | None,
) -> dict[str, Any]:
    from agent.drift.reference import DEFAULT_BUDGET_PER_10K
    from compiler.drift_reference import make_reference

    budget = DEFAULT_BUDGET_PER_10K if budget_per_10k is None else budget_per_10k
    blob, view = make_reference(
        evaluation,
        tc.reference_outputs(),
        task=tc.task,
        model_name=Path(source.location.split(":")[-1]).stem,
        budget_per_10k=budget,
    )
    if blob is None:
        return {"path": None, "reason": view}
    dest = staging / "drift_reference.json"
    dest.write_bytes(blob)
    return {
        "path": dest.name,
        "sha256": file_digest(dest),
        "size_bytes": len(blob),
        "monitors": view,
        "budget_per_10k": budget,
    }


def _fp32_onnx(source: export.ModelSource, calib: Dataset, work: Path) -> tuple[Path, Any]:
    fp32 = work / "fp32.onnx"
    if not source.is_torch:
        export.check_onnx(Path(source.location))
        shutil.copyfile(source.location, fp32)
        return fp32, None
    model = export.load_torch_model(source)
    _check_forward(model, calib)
    export.export_onnx(model, calib.inputs, fp32)
    return fp32, model


def _check_forward(model: Any, calib: Dataset) -> None:
    import torch

    try:
        with torch.no_grad():
            model(*(torch.from_numpy(calib.inputs[n][:2]) for n in export.ordered_names(model, calib.inputs)))
    except Exception as err:
        shapes = {k: tuple(v.shape) for k, v in calib.inputs.items()}
        raise InputError(
            f"calibration data {shapes} does not fit the model: {type(err).__name__}: {err}"
        ) from err


def _place(outcome: pipeline.Outcome, staging: Path) -> dict[str, Any]:
    assert outcome.chosen is not None
    assert outcome.chosen.artifact is not None
    src = Path(outcome.chosen.artifact)
    dest = staging / outcome.profile / f"model{src.suffix}"
    dest.parent.mkdir()
    shutil.copyfile(src, dest)
    rel = str(dest.relative_to(staging))
    return {
        "path": rel,
        "sha256": file_digest(dest),
        "size_bytes": dest.stat().st_size,
        "runtime": outcome.chosen.recipe.runtime,
    }


def _lineage(
    request: BuildRequest,
    source: export.ModelSource,
    fp32: Path,
    *,
    calib: Dataset,
    evaluation: Dataset,
    task: str,
) -> dict[str, Any]:
    return {
        "model": request.model,
        "source_kind": source.kind,
        "input_sha256": export.source_digest(source),
        "weights": str(request.weights) if request.weights else None,
        "fp32_onnx_sha256": file_digest(fp32),
        "export": {"opset": export.OPSET, "dynamic_batch": True},
        "calibration": {"source": calib.source, "sha256": calib.digest, "samples": len(calib)},
        "evaluation": {"source": evaluation.source, "sha256": evaluation.digest, "samples": len(evaluation)},
        "task": task,
        "quality_budget": asdict(request.quality),
        "latency_tolerance": request.latency_tolerance,
        # the request's override (None: each profile's own); what each profile was judged at, and
        # why, is `profiles.<name>.quality_batch`
        "quality_batch": {"serve": 1, "micro_batch": request.micro_batch},
        "latency_clock": request.latency_clock,
    }


def _budget_message(failed: list[pipeline.Outcome]) -> str:
    lines = ["no candidate meets the budget for: " + ", ".join(o.profile for o in failed)]
    for o in failed:
        for c in o.candidates:
            lines.append(f"  {o.profile} / {c.recipe.name}: {'; '.join(c.failures) or 'ok'}")
    return "\n".join(lines)


def _replace_dir(staging: Path, out: Path) -> None:
    if not out.exists():
        staging.rename(out)
        return
    old = out.with_name(f".{out.name}.old-{staging.name.rsplit('-', 1)[-1]}")
    out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)
