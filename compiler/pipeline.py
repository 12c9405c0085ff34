"""Accuracy-aware search for one device profile: which recipe gives the best artifact in budget.

Sans-IO: this module builds nothing and measures nothing itself. It plans candidate recipes from
what the profile supports, asks a `Toolchain` port to build and measure each one on the profile's
runtime, judges every measurement against the budgets, falls back to mixed precision (the few most
sensitive layers kept in float) when int8 breaks the quality budget, and picks the winner. Files,
runtimes, clocks and logging setup live in the adapter (`compiler.toolchain`) and the CLI.

Winner rule: among candidates inside every budget, take the fastest (median thread CPU time of a
batch-1 call on one thread: wall time on a shared host is too noisy to rank by; when the toolchain
can, the passing candidates are re-timed against each other in interleaved rounds and compared by
their median paired ratio, so a load change between two timings does not rank them); any candidate within
`latency_tolerance` of it counts as equally fast (with paired timing: in its best round, i.e. it is
slower only when it was slower in every round), and the smallest of those wins (fewer OTA bytes
and less RAM for no measurable latency cost). `latency_tolerance=0` means strictly the fastest.
Sizes within `SIZE_TIE` of the smallest count as equal too; then the higher quality wins (accuracy,
then cosine, then agreement), then the recipe name, never a timing: two identical runs choose the
same artifact even when the host's CPU-time noise reorders equally fast candidates.

Quality is what the device serves: measured at batch 1 (and at the micro-batch size when the build
says the device micro-batches; both must pass). The latency budget is judged on thread CPU time by
default (`clock="cpu"`: a loaded build host's wall time says nothing about a Pi), or on wall time.
An int8 recipe that quantized nothing fails ("quantized nothing"): it is the float model, renamed;
one whose file is larger than the fp32 export fails too ("the int8 file grew").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

from agent.profile import DeviceProfile
from compiler.errors import UnsupportedError

ORT_RECIPES: dict[str, tuple[dict[str, str], ...]] = {
    "fp32": ({},),
    "int8-static": ({"method": "minmax"}, {"method": "percentile"}),
    "int8-dynamic": (
        {"per_channel": "true"},
        {"per_channel": "true", "smooth": "0.6", "outliers": "10"},
        {"per_channel": "true", "smooth": "0.7", "outliers": "10"},
        {"per_channel": "true", "smooth": "0.8", "outliers": "10"},
    ),
}
LITERT_RECIPES: dict[str, tuple[dict[str, str], ...]] = {
    "fp32": ({},),
    "int8-dynamic": ({"tflite": "dynamic"},),
    "int8-full": ({"tflite": "full"},),
}
MIXED_STEPS = (1, 2, 4, 8, 16)
SIZE_TIE = 0.01  # sizes within 1 % are the same size for choosing
CLOCKS = ("cpu", "wall")


@dataclass(frozen=True)
class Recipe:
    """One way to build an artifact: runtime, quantization kind, its parameters, float-kept nodes."""

    runtime: str
    quantization: str
    params: tuple[tuple[str, str], ...] = ()
    exclude: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        ext = "onnx" if self.runtime == "onnxruntime" else "tflite"
        extra = "-".join(
            v if k == "method" else f"{k}{v}" for k, v in self.params if k not in ("per_channel", "tflite")
        )
        mixed = f"-mixed{len(self.exclude)}" if self.exclude else ""
        return "-".join(p for p in (ext, self.quantization, extra) if p) + mixed


@dataclass(frozen=True)
class Measurement:
    """What the toolchain measured for one artifact on the target runtime (host CPU)."""

    size_bytes: int
    latency_p50_ms: float
    latency_p95_ms: float
    peak_memory_bytes: int
    agreement: float
    cpu_p50_ms: float = 0.0  # thread CPU time per call: robust to a noisy shared host
    accuracy: float | None = None
    cosine_mean: float | None = None
    cosine_min: float | None = None
    accelerator: str = "cpu"
    cpu_p95_ms: float = 0.0
    samples: int = 0  # evaluation samples behind the quality numbers
    agreement_interval: tuple[float, float] | None = None  # 95 % Wilson
    accuracy_interval: tuple[float, float] | None = None
    serve_batch: int = 1  # the batch the quality numbers above were measured at
    micro_batch: int | None = None  # also measured at this batch (the device micro-batches)
    micro_batch_accuracy: float | None = None
    micro_batch_agreement: float | None = None
    micro_batch_cosine_mean: float | None = None
    batch_consistency_cosine_min: float | None = None  # same artifact, batch 1 vs micro-batch
    batch_consistency_max_abs: float | None = None
    speed_ratio: float | None = None  # CPU time / the fastest passing one's, interleaved rounds (median)
    speed_ratio_range: tuple[float, float] | None = None  # min and max over the rounds
    quantized_nodes: int | None = None  # int8 recipes: weighted nodes with int8 weights
    weighted_nodes: int | None = None  # in the float model, subgraphs included


@dataclass(frozen=True)
class QualityBudget:
    """Allowed loss vs the float reference: top-1 points for classifiers, cosine for embeddings."""

    max_accuracy_drop: float = 0.01
    min_cosine: float = 0.99
    min_agreement: float = 0.0


@dataclass(frozen=True)
class Candidate:
    recipe: Recipe
    artifact: str | None
    measurement: Measurement | None
    failures: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.measurement is not None and not self.failures


@dataclass
class Outcome:
    """Everything tried for one profile, in order, and the chosen candidate (None: nothing fits)."""

    profile: str
    candidates: list[Candidate] = field(default_factory=list)
    chosen: Candidate | None = None


class Toolchain(Protocol):
    """Port: builds and measures artifacts. Implementations raise CompilerError subclasses."""

    def build(self, recipe: Recipe) -> str:
        """Build the artifact for `recipe`; return its identifier (a path)."""
        ...

    def measure(self, artifact: str, recipe: Recipe) -> Measurement:
        """Run the artifact on the recipe's runtime and measure it."""
        ...

    def rank_sensitive(self, artifact: str, recipe: Recipe) -> list[str]:
        """Quantized node names, most damaging first (empty if unsupported for the recipe)."""
        ...


@runtime_checkable
class SpeedComparer(Protocol):
    """Optional port: time artifacts against each other in interleaved rounds (paired ratios)."""

    def compare_speed(self, items: list[tuple[str, Recipe]]) -> list[tuple[float, float, float]]:
        """Per item: (median, min, max) of its CPU time over the fastest's, round by round."""
        ...


def plan(profile: DeviceProfile, *, has_torch: bool, all_runtimes: bool = False) -> list[Recipe]:
    """Candidate recipes for a profile: its supported quantization kinds on its runtime(s).

    LiteRT candidates need a torch model (litert-torch converts from PyTorch, not from ONNX).
    """
    runtimes = [profile.runtime.preferred]
    if all_runtimes and profile.runtime.fallback not in runtimes:
        runtimes.append(profile.runtime.fallback)
    recipes: list[Recipe] = []
    for runtime in runtimes:
        table = ORT_RECIPES if runtime == "onnxruntime" else LITERT_RECIPES
        if runtime == "litert" and not has_torch:
            continue
        for kind in profile.quantization:
            recipes += [Recipe(runtime, kind, tuple(sorted(p.items()))) for p in table.get(kind, ())]
    return recipes


def judge(
    m: Measurement, ref: Measurement, profile: DeviceProfile, quality: QualityBudget, *, clock: str = "cpu"
) -> tuple[str, ...]:
    """Every budget the measurement breaks, as readable reasons (empty tuple: it passes)."""
    out = _quality_failures(m.accuracy, m.cosine_mean, m.agreement, ref=ref, quality=quality, at="")
    if m.micro_batch is not None:
        at = f" at micro-batch {m.micro_batch}"
        micro_agreement = m.agreement if m.micro_batch_agreement is None else m.micro_batch_agreement
        out += _quality_failures(
            m.micro_batch_accuracy,
            m.micro_batch_cosine_mean,
            micro_agreement,
            ref=ref,
            quality=quality,
            at=at,
        )
    if m.quantized_nodes == 0:
        out.append(f"quantized nothing: 0 of {m.weighted_nodes} weighted nodes have int8 weights")
    if m.quantized_nodes is not None and m.size_bytes > ref.size_bytes:
        out.append(f"the int8 file grew: {m.size_bytes} B > the fp32 export's {ref.size_bytes} B")
    b = profile.budget
    if m.size_bytes > b.model_bytes:
        out.append(f"size {m.size_bytes} B > model budget {b.model_bytes} B")
    p95, what = (
        (m.cpu_p95_ms, "thread CPU") if clock == "cpu" and m.cpu_p95_ms > 0 else (m.latency_p95_ms, "wall")
    )
    if p95 > b.latency_p95_ms:
        out.append(f"p95 latency {p95:.3f} ms ({what} time on the build host) > {b.latency_p95_ms} ms")
    if m.peak_memory_bytes > b.ram_bytes:
        out.append(f"peak memory {m.peak_memory_bytes} B > RAM budget {b.ram_bytes} B")
    return tuple(out)


def _quality_failures(
    accuracy: float | None,
    cosine: float | None,
    agreement: float,
    *,
    ref: Measurement,
    quality: QualityBudget,
    at: str,
) -> list[str]:
    out = []
    if (
        accuracy is not None
        and ref.accuracy is not None
        and ref.accuracy - accuracy > quality.max_accuracy_drop
    ):
        out.append(
            f"accuracy{at} {accuracy:.4f} is {ref.accuracy - accuracy:.4f} below the reference "
            f"{ref.accuracy:.4f} (allowed {quality.max_accuracy_drop:.4f})"
        )
    if cosine is not None and cosine < quality.min_cosine:
        out.append(f"mean cosine{at} {cosine:.4f} < {quality.min_cosine:.4f}")
    if agreement < quality.min_agreement:
        out.append(f"agreement{at} {agreement:.4f} < {quality.min_agreement:.4f}")
    return out


def choose(
    candidates: Sequence[Candidate], latency_tolerance: float = 0.25, prefer: str = ""
) -> Candidate | None:
    """The smallest candidate among those within `latency_tolerance` of the fastest passing one.

    `prefer` (the recipe an earlier version of the model shipped with) wins when it passes and is
    within the band: equally fast by this measure, and a new version then keeps its parent's
    numerics and layout, so a delta reuses the unchanged tensors and the live behaviour a rollout
    compares against does not change with which recipe a noisy timing happened to favour."""
    ok = [c for c in candidates if c.ok and c.measurement is not None]
    if not ok:
        return None
    fastest = min(_speed(c.measurement) for c in ok if c.measurement)
    near = [
        c for c in ok if c.measurement and _fastest_seen(c.measurement) <= fastest * (1 + latency_tolerance)
    ]
    sticky = [c for c in near if prefer and c.recipe.name == prefer]
    if sticky:
        return sticky[0]
    smallest = min(c.measurement.size_bytes for c in near if c.measurement)
    same_size = [c for c in near if c.measurement and c.measurement.size_bytes <= smallest * (1 + SIZE_TIE)]
    return min(same_size, key=lambda c: (_quality_key(c), c.recipe.name))


def _quality_key(c: Candidate) -> tuple[float, float, float]:
    """Sort key: higher quality first (accuracy, then cosine, then agreement; absent = equal)."""
    m = c.measurement
    if m is None:
        return (0.0, 0.0, 0.0)
    return (-(m.accuracy or 0.0), -(m.cosine_mean or 0.0), -m.agreement)


@dataclass(frozen=True)
class _Run:
    profile: DeviceProfile
    toolchain: Toolchain
    reference: Measurement
    quality: QualityBudget
    on_event: Callable[[str], None]
    clock: str = "cpu"


def search(
    profile: DeviceProfile,
    recipes: Sequence[Recipe],
    toolchain: Toolchain,
    reference: Measurement,
    *,
    quality: QualityBudget,
    latency_tolerance: float = 0.25,
    prefer: str = "",
    on_event: Callable[[str], None] = lambda _msg: None,
    clock: str = "cpu",
) -> Outcome:
    """Build, measure and judge every recipe, then choose.

    If no int8 recipe passes and some ONNX int8 recipe failed on quality alone, the most accurate
    of those is retried with its most sensitive nodes kept in float (mixed precision).
    """
    run = _Run(profile, toolchain, reference, quality, on_event, clock)
    outcome = Outcome(profile.name)
    outcome.candidates = [_try(run, recipe) for recipe in recipes]
    int8 = [c for c in outcome.candidates if c.recipe.quantization.startswith("int8")]
    near_misses = [c for c in int8 if _quality_only_failure(c) and c.recipe.runtime == "onnxruntime"]
    if near_misses and not any(c.ok for c in int8):
        outcome.candidates += _mixed(run, max(near_misses, key=_quality_score))
    outcome.candidates = _paired_speed(run, outcome.candidates)
    outcome.chosen = choose(outcome.candidates, latency_tolerance, prefer)
    on_event(f"{profile.name}: chose {outcome.chosen.recipe.name if outcome.chosen else 'nothing'}")
    return outcome


def _try(run: _Run, recipe: Recipe) -> Candidate:
    run.on_event(f"{run.profile.name}: building {recipe.name}")
    try:
        artifact = run.toolchain.build(recipe)
        m = run.toolchain.measure(artifact, recipe)
    except UnsupportedError as err:  # one recipe failing is a verdict on that recipe, not on the run
        run.on_event(f"{run.profile.name}: {recipe.name} failed to build: {err}")
        return Candidate(recipe, None, None, (f"build failed: {err}",))
    failures = judge(m, run.reference, run.profile, run.quality, clock=run.clock)
    run.on_event(
        f"{run.profile.name}: {recipe.name} {'ok' if not failures else 'fails: ' + '; '.join(failures)}"
    )
    return Candidate(recipe, artifact, m, failures)


def _mixed(run: _Run, base: Candidate) -> list[Candidate]:
    """Keep the k most sensitive nodes in float, k = 1, 2, 4, ..., until quality holds."""
    if base.artifact is None:
        return []
    ranked = run.toolchain.rank_sensitive(base.artifact, base.recipe)
    tried: list[Candidate] = []
    for k in MIXED_STEPS:
        if k > max(1, len(ranked) // 2):
            break
        cand = _try(run, replace(base.recipe, exclude=tuple(ranked[:k])))
        tried.append(cand)
        if not _quality_only_failure(cand):
            break
    return tried


def _paired_speed(run: _Run, candidates: list[Candidate]) -> list[Candidate]:
    """Re-time the passing candidates against each other (when the toolchain can): separate
    timings taken minutes apart on a shared host differ by more than the candidates do."""
    ok = [i for i, c in enumerate(candidates) if c.ok and c.artifact is not None]
    if len(ok) < 2 or not isinstance(run.toolchain, SpeedComparer):
        return candidates
    run.on_event(f"{run.profile.name}: timing {len(ok)} passing candidates against each other")
    ratios = run.toolchain.compare_speed([(str(candidates[i].artifact), candidates[i].recipe) for i in ok])
    out = list(candidates)
    for i, (med, lo, hi) in zip(ok, ratios, strict=True):
        c = candidates[i]
        if c.measurement is not None:
            out[i] = replace(
                c, measurement=replace(c.measurement, speed_ratio=med, speed_ratio_range=(lo, hi))
            )
    return out


def _fastest_seen(m: Measurement) -> float:
    """A candidate is slower only if it was slower in every interleaved round: its best round counts."""
    return m.speed_ratio_range[0] if m.speed_ratio_range else _speed(m)


def _speed(m: Measurement) -> float:
    """Paired CPU-time ratio when measured, else CPU time per call (robust under load), else wall p50."""
    return m.speed_ratio or m.cpu_p50_ms or m.latency_p50_ms


def _quality_score(c: Candidate) -> float:
    m = c.measurement
    if m is None:
        return -1.0
    return (
        m.accuracy if m.accuracy is not None else m.cosine_mean if m.cosine_mean is not None else m.agreement
    )


def _quality_only_failure(c: Candidate) -> bool:
    quality_words = ("accuracy", "mean cosine", "agreement")  # at batch 1 or at the micro-batch
    return bool(c.failures) and all(f.startswith(quality_words) for f in c.failures)
