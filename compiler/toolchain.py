"""The local Toolchain adapter: builds artifacts with the passes and measures them on the runtimes.

Owns a work folder of candidate artifacts (cached by recipe name, shared across profiles), the
float reference outputs, and the measurement of every candidate: quality on the evaluation set with
the profile's thread count at batch 1 (what a device serves; the reference too) and, when the device
micro-batches, again at that batch with the batch-1 vs micro-batch consistency of the same file;
p50/p95 batch-1 latency (wall and thread CPU) on one thread, and the interleaved paired comparison
of the passing candidates' CPU time that the choice uses; resident-memory peak; size; and, for
ONNX int8 recipes, what quantization changed (`compiler.effect`). Does not choose anything (that is
`compiler.pipeline`) and does not write final outputs (`compiler.build`).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from compiler import effect, measure, quality
from compiler.data import Dataset, file_digest
from compiler.measure import Runner
from compiler.passes import convert_tflite, quantize, smooth
from compiler.pipeline import Measurement, Recipe

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)
SPEED_ROUNDS = 7


@dataclass
class Target:
    """How a profile runs artifacts: threads for throughput/quality runs, the LiteRT delegate, and
    up to how many samples its devices micro-batch (None: batch 1 only)."""

    threads: int = 1
    delegate: str = "xnnpack"
    micro_batch: int | None = None


@dataclass
class LocalToolchain:
    """Implements `compiler.pipeline.Toolchain` on this machine (see module docstring)."""

    workdir: Path
    fp32_onnx: Path
    calib: Dataset
    evaluation: Dataset
    task: str
    torch_model: torch.nn.Module | None = None
    latency_calls: int = 200
    target: Target = field(default_factory=Target)
    _cache: dict[str, Path] = field(default_factory=dict)
    _measured: dict[tuple[str, str, int, str, int], Measurement] = field(default_factory=dict)
    _reference: np.ndarray | None = None

    def for_target(self, target: Target) -> LocalToolchain:
        """A view with another target that shares the artifact cache and the reference."""
        view = copy.copy(self)
        view.target = target
        return view

    def reference_outputs(self) -> np.ndarray:
        if self._reference is None:
            runner = measure.open_runtime(self.fp32_onnx, "onnxruntime", measure.cpu_count())
            self._reference = measure.predict(runner, self.evaluation, batch_size=1)
        return self._reference

    def reference(self) -> Measurement:
        """The fp32 ONNX model measured like any candidate (its quality is the reference's own)."""
        return self.measure(str(self.fp32_onnx), Recipe("onnxruntime", "fp32"))

    def build(self, recipe: Recipe) -> str:
        if recipe.name not in self._cache:
            ext = "onnx" if recipe.runtime == "onnxruntime" else "tflite"
            out = self.workdir / f"{recipe.name}.{ext}"
            self._cache[recipe.name] = (
                self._build_onnx(recipe, out) if ext == "onnx" else self._build_tflite(recipe, out)
            )
        return str(self._cache[recipe.name])

    def measure(self, artifact: str, recipe: Recipe) -> Measurement:
        """Measured once per distinct file: recipes that produce the same bytes (a smoothing pass
        that found nothing to smooth) get the same numbers, not two draws of timing noise."""
        kind = "int8" if recipe.quantization.startswith("int8") else recipe.quantization  # effect is for int8
        key = (
            file_digest(Path(artifact)),
            f"{recipe.runtime}/{kind}",
            self.target.threads,
            self.target.delegate,
            self.target.micro_batch or 1,
        )
        if key not in self._measured:
            self._measured[key] = self._measure(artifact, recipe)
        return self._measured[key]

    def _measure(self, artifact: str, recipe: Recipe) -> Measurement:
        path = Path(artifact)
        threads = min(self.target.threads, measure.cpu_count())
        runner = measure.open_runtime(path, recipe.runtime, threads, self.target.delegate)
        outputs = measure.predict(runner, self.evaluation, batch_size=1)
        q = quality.evaluate(outputs, self.reference_outputs(), self.evaluation.labels, self.task)
        one = measure.open_runtime(path, recipe.runtime, 1, self.target.delegate)
        timing = measure.time_batch1(one, self.evaluation, calls=self.latency_calls)
        peak = measure.peak_memory(path, recipe.runtime, self.target.delegate)
        m = Measurement(
            size_bytes=path.stat().st_size,
            latency_p50_ms=timing.p50_ms,
            latency_p95_ms=timing.p95_ms,
            cpu_p50_ms=timing.cpu_p50_ms,
            cpu_p95_ms=timing.cpu_p95_ms,
            peak_memory_bytes=peak,
            agreement=q.agreement,
            accuracy=q.accuracy,
            cosine_mean=q.cosine_mean,
            cosine_min=q.cosine_min,
            accelerator=runner.accelerator,
            samples=q.samples,
            agreement_interval=q.agreement_interval,
            accuracy_interval=q.accuracy_interval,
        )
        return self._effect(self._micro(m, runner, outputs), path, recipe)

    def _micro(self, m: Measurement, runner: Runner, batch1: np.ndarray) -> Measurement:
        """Quality at the micro-batch size, and how far its outputs are from batch 1's (same file)."""
        size = self.target.micro_batch
        if not size or size <= 1 or runner.batch_fixed:
            return m  # static-batch (LiteRT) artifacts cannot be micro-batched
        outputs = measure.predict(runner, self.evaluation, batch_size=size)
        q = quality.evaluate(outputs, self.reference_outputs(), self.evaluation.labels, self.task)
        cos_min, max_abs = quality.consistency(batch1, outputs)
        return replace(
            m,
            micro_batch=size,
            micro_batch_accuracy=q.accuracy,
            micro_batch_agreement=q.agreement,
            micro_batch_cosine_mean=q.cosine_mean,
            batch_consistency_cosine_min=cos_min,
            batch_consistency_max_abs=max_abs,
        )

    def _effect(self, m: Measurement, path: Path, recipe: Recipe) -> Measurement:
        if recipe.runtime != "onnxruntime" or not recipe.quantization.startswith("int8"):
            return m
        e = effect.quant_effect(self.fp32_onnx, path)
        return replace(m, quantized_nodes=e.quantized_nodes, weighted_nodes=e.weighted_nodes)

    def compare_speed(self, items: list[tuple[str, Recipe]]) -> list[tuple[float, float, float]]:
        """Per artifact: (median, min, max) over interleaved rounds of its CPU time / the round's fastest."""
        keys = [(file_digest(Path(a)), r.runtime) for a, r in items]
        unique = list(dict.fromkeys(keys))  # byte-identical artifacts are timed once
        first = {k: items[keys.index(k)] for k in unique}
        runners = [
            measure.open_runtime(Path(a), r.runtime, 1, self.target.delegate) for a, r in first.values()
        ]
        calls = max(5, self.latency_calls // SPEED_ROUNDS)
        cpu = measure.interleaved_cpu(runners, self.evaluation, rounds=SPEED_ROUNDS, calls=calls)
        ratios = cpu / cpu.min(axis=1, keepdims=True)
        col = {k: j for j, k in enumerate(unique)}
        return [
            (
                float(np.median(ratios[:, col[k]])),
                float(ratios[:, col[k]].min()),
                float(ratios[:, col[k]].max()),
            )
            for k in keys
        ]

    def rank_sensitive(self, artifact: str, recipe: Recipe) -> list[str]:
        if recipe.runtime != "onnxruntime":
            return []
        pre = self.workdir / "fp32-preprocessed.onnx"
        if not pre.exists():
            quantize.preprocess(self.fp32_onnx, pre)
        ranked = quantize.rank_sensitive_nodes(pre, Path(artifact), self.evaluation)
        logger.info("sensitivity ranking for %s: %s", recipe.name, ranked[:8])
        return [name for name, _ in ranked]

    def _build_onnx(self, recipe: Recipe, out: Path) -> Path:
        params = dict(recipe.params)
        if recipe.quantization == "fp32":
            return quantize.copy_model(self.fp32_onnx, out)
        if recipe.quantization == "int8-static":
            return quantize.quantize_static(
                self.fp32_onnx, out, self.calib, method=params.get("method", "minmax"), exclude=recipe.exclude
            )
        if recipe.quantization == "int8-dynamic":
            per_channel = params.get("per_channel", "true") == "true"
            source = self.fp32_onnx
            if "smooth" in params:
                alpha, ratio = float(params["smooth"]), float(params.get("outliers", "0"))
                source = self.workdir / f"fp32-smooth{alpha}-outliers{ratio}.onnx"
                if not source.exists():
                    smooth.smooth_matmuls(
                        self.fp32_onnx, source, self.calib, alpha=alpha, min_outlier_ratio=ratio
                    )
            return quantize.quantize_dynamic(source, out, per_channel=per_channel, exclude=recipe.exclude)
        raise ValueError(f"no ONNX recipe for {recipe.quantization}")

    def _build_tflite(self, recipe: Recipe, out: Path) -> Path:
        if self.torch_model is None:
            raise ValueError("LiteRT recipes need a torch model")
        fp32 = self.workdir / "tflite-fp32.tflite"
        if not fp32.exists():
            convert_tflite.convert_fp32(self.torch_model, self.calib.inputs, fp32)
        if recipe.quantization == "fp32":
            return quantize.copy_model(fp32, out)
        kind = dict(recipe.params).get("tflite", "full")
        return convert_tflite.quantize_tflite(fp32, out, kind, self.calib)
