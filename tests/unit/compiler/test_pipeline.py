"""The sans-IO search: planning, judging, choosing and the mixed-precision fallback.

`TableToolchain` is a working fake of the Toolchain port: it "builds" by recording the recipe and
returns measurements from a table keyed by recipe name, so every search decision is checked without
running a model. The real adapter is covered by tests/integration/test_compiler_build.py.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent.profile import load_profile
from compiler.pipeline import (
    Candidate,
    Measurement,
    QualityBudget,
    Recipe,
    choose,
    judge,
    plan,
    search,
)

REF = Measurement(
    size_bytes=1000,
    latency_p50_ms=1.0,
    latency_p95_ms=1.2,
    peak_memory_bytes=10,
    agreement=1.0,
    accuracy=0.98,
)


def m(size: int, p50: float, acc: float = 0.98, **kw: object) -> Measurement:
    return replace(REF, size_bytes=size, latency_p50_ms=p50, latency_p95_ms=p50 * 1.1, accuracy=acc, **kw)  # type: ignore[arg-type]


class TableToolchain:
    def __init__(self, table: dict[str, Measurement], ranking: list[str] | None = None) -> None:
        self.table, self.ranking, self.built = table, ranking or [], []  # type: ignore[var-annotated]

    def build(self, recipe: Recipe) -> str:
        self.built.append(recipe.name)
        return recipe.name

    def measure(self, artifact: str, recipe: Recipe) -> Measurement:
        return self.table[artifact]

    def rank_sensitive(self, artifact: str, recipe: Recipe) -> list[str]:
        return list(self.ranking)


def test_plan_follows_the_profile_quantization_kinds_and_runtime() -> None:
    pi = load_profile("raspberry-pi-4")
    names = [r.name for r in plan(pi, has_torch=True)]
    assert names == [
        "onnx-fp32",
        "onnx-int8-static-minmax",
        "onnx-int8-static-percentile",
        "onnx-int8-dynamic",
        "onnx-int8-dynamic-outliers10-smooth0.6",
        "onnx-int8-dynamic-outliers10-smooth0.7",
        "onnx-int8-dynamic-outliers10-smooth0.8",
    ]
    both = [r.name for r in plan(pi, has_torch=True, all_runtimes=True)]
    assert "tflite-int8-dynamic" in both
    assert "tflite-fp32" in both
    coral = load_profile("coral-dev-board")
    assert [r.name for r in plan(coral, has_torch=True)] == ["tflite-int8-full"]
    assert plan(coral, has_torch=False) == []  # no torch model -> no LiteRT artifacts


def test_judge_reports_every_broken_budget() -> None:
    pi = load_profile("raspberry-pi-4")
    bad = m(pi.budget.model_bytes + 1, 100.0, acc=0.90)
    reasons = judge(bad, REF, pi, QualityBudget(max_accuracy_drop=0.01))
    assert any(r.startswith("accuracy") for r in reasons)
    assert any(r.startswith("size") for r in reasons)
    assert any(r.startswith("p95 latency") for r in reasons)
    assert judge(m(10, 0.5, acc=0.975), REF, pi, QualityBudget(max_accuracy_drop=0.01)) == ()


def test_judge_uses_cosine_for_embeddings() -> None:
    pi = load_profile("raspberry-pi-4")
    emb = replace(m(10, 0.5), accuracy=None, cosine_mean=0.97)
    assert judge(emb, replace(REF, accuracy=None), pi, QualityBudget(min_cosine=0.99))[0].startswith(
        "mean cosine"
    )


def _cand(name: str, meas: Measurement, failures: tuple[str, ...] = ()) -> Candidate:
    return Candidate(Recipe("onnxruntime", name), name, meas, failures)


def test_choose_prefers_smaller_within_the_latency_band_and_fastest_outside_it() -> None:
    fp32, int8 = _cand("fp32", m(1000, 1.00)), _cand("int8", m(300, 1.15))
    assert choose([fp32, int8], latency_tolerance=0.25) is int8
    assert choose([fp32, int8], latency_tolerance=0.0) is fp32
    slow = _cand("dyn", m(250, 5.0))
    assert choose([fp32, int8, slow], latency_tolerance=0.25) is int8
    assert choose([_cand("x", m(1, 1), ("size too big",))]) is None


def test_choose_keeps_the_preferred_recipe_when_it_passes_within_the_band() -> None:
    static, dynamic = _cand("int8-static", m(300, 1.00, acc=0.985)), _cand("int8-dynamic", m(300, 1.20))
    assert choose([static, dynamic]) is static  # same size, as fast (band): the more accurate
    name = dynamic.recipe.name  # the recipe the parent shipped with
    assert choose([static, dynamic], prefer=name) is dynamic  # as fast, by the band
    slow = _cand("int8-dynamic", m(300, 1.40))  # outside the 25 % band: speed wins
    assert choose([static, slow], prefer=name) is static
    failing = _cand("int8-dynamic", m(300, 1.0), ("accuracy drop",))
    assert choose([static, failing], prefer=name) is static
    assert choose([static, dynamic], prefer="no-such-recipe") is static


def test_search_falls_back_to_mixed_precision_until_quality_holds() -> None:
    pi = load_profile("raspberry-pi-4")
    table = {
        "onnx-int8-dynamic": m(300, 0.5, acc=0.90),
        "onnx-int8-dynamic-mixed1": m(320, 0.55, acc=0.95),
        "onnx-int8-dynamic-mixed2": m(340, 0.6, acc=0.975),
        "onnx-int8-dynamic-mixed4": m(380, 0.7, acc=0.98),
    }
    tc = TableToolchain(table, ranking=["a", "b", "c", "d", "e", "f", "g", "h"])
    recipe = Recipe("onnxruntime", "int8-dynamic", (("per_channel", "true"),))
    out = search(pi, [recipe], tc, REF, quality=QualityBudget(max_accuracy_drop=0.01))
    assert tc.built == ["onnx-int8-dynamic", "onnx-int8-dynamic-mixed1", "onnx-int8-dynamic-mixed2"]
    assert out.chosen is not None
    assert out.chosen.recipe.exclude == ("a", "b")  # the two most sensitive nodes stay float


def test_search_returns_no_choice_when_nothing_fits() -> None:
    pi = load_profile("raspberry-pi-4")
    tc = TableToolchain({"onnx-fp32": m(pi.budget.model_bytes * 2, 0.5)})
    out = search(pi, [Recipe("onnxruntime", "fp32")], tc, REF, quality=QualityBudget())
    assert out.chosen is None
    assert out.candidates[0].failures[0].startswith("size")
    assert tc.built == ["onnx-fp32"]  # a size failure does not trigger mixed precision


@pytest.mark.parametrize("k", [1, 3])
def test_recipe_names_are_stable_and_distinct(k: int) -> None:
    base = Recipe("onnxruntime", "int8-static", (("method", "entropy"),))
    assert base.name == "onnx-int8-static-entropy"
    assert replace(base, exclude=tuple("abc"[:k])).name == f"onnx-int8-static-entropy-mixed{k}"


def test_no_mixed_precision_when_some_int8_recipe_already_passes() -> None:
    pi = load_profile("raspberry-pi-4")
    table = {"onnx-int8-static-minmax": m(300, 0.5, acc=0.90), "onnx-int8-dynamic": m(300, 0.6, acc=0.98)}
    tc = TableToolchain(table, ranking=["a", "b", "c"])
    recipes = [
        Recipe("onnxruntime", "int8-static", (("method", "minmax"),)),
        Recipe("onnxruntime", "int8-dynamic", (("per_channel", "true"),)),
    ]
    out = search(pi, recipes, tc, REF, quality=QualityBudget(max_accuracy_drop=0.01))
    assert tc.built == ["onnx-int8-static-minmax", "onnx-int8-dynamic"]
    assert out.chosen is not None
    assert out.chosen.recipe.name == "onnx-int8-dynamic"


def test_mixed_precision_starts_from_the_most_accurate_near_miss() -> None:
    pi = load_profile("raspberry-pi-4")
    table = {
        "onnx-int8-static-minmax": replace(m(300, 0.5), accuracy=None, cosine_mean=0.41),
        "onnx-int8-dynamic": replace(m(300, 0.6), accuracy=None, cosine_mean=0.992),
        "onnx-int8-dynamic-mixed1": replace(m(310, 0.62), accuracy=None, cosine_mean=0.996),
    }
    tc = TableToolchain(table, ranking=["a", "b", "c"])
    recipes = [
        Recipe("onnxruntime", "int8-static", (("method", "minmax"),)),
        Recipe("onnxruntime", "int8-dynamic", (("per_channel", "true"),)),
    ]
    ref = replace(REF, accuracy=None)
    out = search(pi, recipes, tc, ref, quality=QualityBudget(min_cosine=0.995))
    assert tc.built[-1] == "onnx-int8-dynamic-mixed1"
    assert out.chosen is not None
    assert out.chosen.recipe.exclude == ("a",)


class FailingToolchain(TableToolchain):
    def build(self, recipe: Recipe) -> str:
        if "percentile" in recipe.name:
            from compiler.errors import UnsupportedError

            raise UnsupportedError("Too many bins for data range")
        return super().build(recipe)


def test_one_recipe_failing_to_build_is_a_verdict_not_a_crash() -> None:
    pi = load_profile("raspberry-pi-4")
    tc = FailingToolchain({"onnx-fp32": m(900, 0.5)})
    recipes = [
        Recipe("onnxruntime", "int8-static", (("method", "percentile"),)),
        Recipe("onnxruntime", "fp32"),
    ]
    out = search(pi, recipes, tc, REF, quality=QualityBudget())
    assert out.candidates[0].failures[0].startswith("build failed: Too many bins")
    assert out.chosen is not None
    assert out.chosen.recipe.name == "onnx-fp32"
