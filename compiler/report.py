"""Build report: the JSON document and the Markdown model card, with lineage.

Owns the report layout (format_version 1): input digest, passes and their parameters, calibration
and evaluation data digests, tool versions, host, every candidate's metrics and budget verdicts, and
the chosen artifact per profile, the batches each profile was judged at and where the micro-batch
size came from (`quality_batch`), and per profile the notes a reader must not miss (95 % intervals of
agreement on small evaluation sets, batch-1 vs micro-batch differences, int8 recipes that quantized
nothing). Quality numbers are at batch 1, the batch a device serves. Pure functions over
dataclasses; writing files is `compiler.build`.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
from dataclasses import asdict
from typing import Any

from compiler.pipeline import Candidate, Measurement, Outcome, Recipe

FORMAT_VERSION = 1
TOOLS = (
    "torch",
    "onnx",
    "onnxscript",
    "onnxruntime",
    "ai-edge-litert",
    "litert-torch",
    "ai-edge-quantizer",
    "numpy",
)


def tool_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in TOOLS:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def host() -> dict[str, str]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "machine": platform.machine(),
        "cpu": cpu,
        "note": "latency/memory measured on this host, not on the device",
    }


def passes_for(recipe: Recipe) -> list[dict[str, Any]]:
    """The passes (after export) that produced a recipe's artifact, with their parameters."""
    p = dict(recipe.params)
    floats = list(recipe.exclude)
    if recipe.runtime == "litert":
        steps: list[dict[str, Any]] = [
            {"pass": "convert_tflite.convert_fp32", "tool": "litert-torch", "batch": 1}
        ]
        if recipe.quantization != "fp32":
            steps.append(
                {
                    "pass": "convert_tflite.quantize_tflite",
                    "tool": "ai-edge-quantizer",
                    "kind": p.get("tflite", "full"),
                }
            )
        return steps
    if recipe.quantization == "int8-static":
        return [
            {
                "pass": "quantize.quantize_static",
                "format": "QDQ",
                "weights": "int8 per-channel",
                "activations": "uint8",
                "calibration": p.get("method", "minmax"),
                "float_nodes": floats,
            }
        ]
    if recipe.quantization == "int8-dynamic":
        steps = []
        if "smooth" in p:
            steps.append(
                {
                    "pass": "smooth.smooth_matmuls",
                    "alpha": float(p["smooth"]),
                    "min_outlier_ratio": float(p.get("outliers", "0")),
                }
            )
        steps.append(
            {"pass": "quantize.quantize_dynamic", "weights": "int8 per-channel", "float_nodes": floats}
        )
        return steps
    return []


def candidate_dict(c: Candidate) -> dict[str, Any]:
    return {
        "recipe": c.recipe.name,
        "runtime": c.recipe.runtime,
        "quantization": c.recipe.quantization,
        "params": dict(c.recipe.params),
        "float_nodes": list(c.recipe.exclude),
        "metrics": asdict(c.measurement) if c.measurement else None,
        "passes_budget": c.ok,
        "failures": list(c.failures),
    }


def build_report(
    *,
    lineage: dict[str, Any],
    reference: Measurement,
    outcomes: list[Outcome],
    artifacts: dict[str, dict[str, Any]],
    quality_batch: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Assemble the JSON report (see module docstring for the layout)."""
    batches = quality_batch or {}
    return {
        "format_version": FORMAT_VERSION,
        "lineage": lineage | {"tools": tool_versions(), "host": host()},
        "reference": asdict(reference),
        "profiles": {
            o.profile: {
                "chosen": o.chosen.recipe.name if o.chosen else None,
                "passes": passes_for(o.chosen.recipe) if o.chosen else [],
                "artifact": artifacts.get(o.profile),
                "quality_batch": batches.get(o.profile, {"serve": 1, "micro_batch": None, "source": None}),
                "candidates": [_with_delta(candidate_dict(c), c, reference) for c in o.candidates],
                "notes": profile_notes(o) + _unbatched_note(o, batches.get(o.profile, {})),
            }
            for o in outcomes
        },
    }


def _with_delta(doc: dict[str, Any], c: Candidate, reference: Measurement) -> dict[str, Any]:
    """+ what the recipe changed against the fp32 export: bytes and (ONNX int8) weighted nodes."""
    m = c.measurement
    if m is None:
        return doc
    doc["change"] = {
        "size_delta_bytes": m.size_bytes - reference.size_bytes,
        "size_ratio": round(m.size_bytes / reference.size_bytes, 4) if reference.size_bytes else None,
        "quantized_nodes": m.quantized_nodes,
        "weighted_nodes": m.weighted_nodes,
    }
    return doc


WIDE_INTERVAL = 0.05  # a 95 % interval wider than +-5 points gets a note
CONSISTENT_COSINE = 0.9999


def profile_notes(o: Outcome) -> list[str]:
    """What a reader of the numbers must know: sample-size uncertainty, batch dependence, no-ops."""
    notes = [
        f"{c.recipe.name} quantized nothing (0 of {c.measurement.weighted_nodes} weighted nodes)"
        for c in o.candidates
        if c.measurement and c.measurement.quantized_nodes == 0
    ]
    m = o.chosen.measurement if o.chosen else None
    if m is None:
        return notes
    if m.agreement_interval:
        lo, hi = m.agreement_interval
        what = "top-1" if m.cosine_mean is None else "nearest-neighbour"
        line = f"{what} agreement {m.agreement:.4f}, 95% interval {lo:.3f}-{hi:.3f} (n={m.samples}, batch 1)"
        if (hi - lo) / 2 > WIDE_INTERVAL:
            line += ": the evaluation set is too small for a tighter claim"
        notes.append(line)
    cos = m.batch_consistency_cosine_min
    if cos is not None and cos < CONSISTENT_COSINE:
        notes.append(
            f"outputs at batch 1 and micro-batch {m.micro_batch} differ (min cosine {cos:.4f}, max |diff| "
            f"{m.batch_consistency_max_abs:.4g}): with micro-batching one caller's result depends on "
            "the others in its batch"
        )
    return notes


def model_card(report: dict[str, Any]) -> str:
    """Markdown model card rendered from a report."""
    lin = report["lineage"]
    ref = report["reference"]
    lines = [
        f"# Model card: {lin['model']}",
        "",
        "## Lineage",
        f"- input: `{lin['model']}` ({lin['source_kind']}), sha256 `{lin['input_sha256']}`",
        f"- calibration data: `{lin['calibration']['source']}` ({lin['calibration']['samples']} samples), "
        f"sha256 `{lin['calibration']['sha256']}`",
        f"- evaluation data: `{lin['evaluation']['source']}` ({lin['evaluation']['samples']} samples), "
        f"sha256 `{lin['evaluation']['sha256']}`",
        f"- export: opset {lin['export']['opset']}, task {lin['task']}, budget {lin['quality_budget']}",
        "- tools: " + ", ".join(f"{k} {v}" for k, v in lin["tools"].items()),
        f"- host: {lin['host']['cpu']} ({lin['host']['note']})",
        "",
        "## Reference (fp32 ONNX on onnxruntime)",
        f"- accuracy {_fmt(ref['accuracy'])}, size {ref['size_bytes']} B, p50 {ref['latency_p50_ms']:.4f} ms",
    ]
    for name, prof in report["profiles"].items():
        lines += ["", f"## Profile `{name}`: chose `{prof['chosen']}`", ""]
        if "quality_batch" in prof:
            lines.append(_batch_line(prof["quality_batch"]) + "\n")
        if prof["artifact"]:
            art = prof["artifact"]
            lines.append(f"Artifact `{art['path']}`, sha256 `{art['sha256']}`, {art['size_bytes']} B.\n")
            lines.append(
                "Passes after export: " + ("; ".join(json.dumps(s) for s in prof["passes"]) or "none") + "\n"
            )
        lines += [
            "| recipe | size B | accuracy | agreement (95% interval) | cosine mean | cpu p50 ms | cpu p95 ms "
            "| p95 ms | peak mem B | verdict |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c in prof["candidates"]:
            m = c["metrics"] or {}
            verdict = "ok" if c["passes_budget"] else "; ".join(c["failures"])
            lines.append(
                f"| {c['recipe']} | {m.get('size_bytes', '')} | {_fmt(m.get('accuracy'))} | "
                f"{_fmt(m.get('agreement'))}{_interval(m.get('agreement_interval'))} | "
                f"{_fmt(m.get('cosine_mean'))} | "
                f"{m.get('cpu_p50_ms', 0):.4f} | {m.get('cpu_p95_ms', 0):.4f} | "
                f"{m.get('latency_p95_ms', 0):.4f} | "
                f"{m.get('peak_memory_bytes', '')} | {verdict} |"
            )
        if prof.get("notes"):
            lines += ["", *(f"- {n}" for n in prof["notes"])]
    return "\n".join(lines) + "\n"


def _unbatched_note(o: Outcome, qb: dict[str, Any]) -> list[str]:
    """A chosen artifact with a fixed batch (LiteRT) was not run at the micro-batch size: say so."""
    m = o.chosen.measurement if o.chosen else None
    if m is None or not qb.get("micro_batch") or m.micro_batch is not None:
        return []
    return [
        f"quality not measured at micro-batch {qb['micro_batch']}: the chosen artifact has a fixed "
        "batch, so devices serve it one sample per call"
    ]


_SOURCES = {
    "request": "the build request (`--micro-batch`)",
    "profile": "the profile's `serving.micro_batch`",
}


def _batch_line(qb: dict[str, Any]) -> str:
    """Which batches quality was judged at, and who chose the micro-batch size."""
    size, source = qb.get("micro_batch"), str(qb.get("source") or "")
    origin = _SOURCES.get(source, source)
    if size:
        return f"Quality judged at batch 1 and at micro-batch {size} (from {origin})."
    if source:
        return f"Quality judged at batch 1 only (micro-batch 1 from {origin})."
    return "Quality judged at batch 1 only (no micro-batch size asked for or in the profile)."


def _interval(iv: list[float] | None) -> str:
    return f" ({iv[0]:.3f}-{iv[1]:.3f})" if iv else ""


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"
