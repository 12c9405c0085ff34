"""Local gates judge only on their minimum sample: with too few samples they say "not enough data",
the shadow run waits for live inputs within its window (fake clock, no sleeping), and when the
window ends short the stated policy decides; a good update is never failed on 3 samples."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from agent.ota import gates
from agent.ota.evaluate import GoldenSet, shadow_check
from agent.ota.serving import Batch, ServingModel

LIMITS = gates.thresholds({})


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def wait(self, s: float) -> bool:
        self.waits.append(s)
        self.now += s
        return False


class FakeServing:
    """Serves a model; live inputs arrive `per_wait` at a time (one per tick of the fake clock)."""

    def __init__(self, clock: FakeClock, *, per_tick: int, slow_candidate: float = 1.0) -> None:
        self.clock = clock
        self.per_tick = per_tick
        self.slow = slow_candidate
        self.evaluated: list[int] = []

    def serving(self) -> ServingModel | None:
        return ServingModel(name="m", version="1", sha256="a" * 64)

    def live_inputs(self) -> list[Batch]:
        n = int(len(self.clock.waits) * self.per_tick)
        return [{"x": np.full((1, 4), i, dtype=np.float32)} for i in range(n)]

    async def evaluate(
        self, slot: str, batches: list[Batch]
    ) -> tuple[list[dict[str, np.ndarray]], list[float]]:
        self.evaluated.append(len(batches))
        outputs = [{"y": np.eye(4, dtype=np.float32)[[int(b["x"][0, 0]) % 4]]} for b in batches]
        latency = 0.002 * (self.slow if slot == "candidate" else 1.0)
        return outputs, [latency] * len(batches)


def _check(serving: Any, clock: FakeClock, limits: dict[str, float], golden: GoldenSet | None = None) -> Any:
    return asyncio.run(shadow_check(serving, golden, limits, clock=clock, wait=clock.wait))


def test_shadow_waits_for_enough_live_inputs_then_judges() -> None:
    clock = FakeClock()
    serving = FakeServing(clock, per_tick=4)
    passed, detail = _check(serving, clock, LIMITS)
    need = gates.shadow_needed(LIMITS)
    assert need == 30
    assert passed and "samples=32" in detail and "not enough" not in detail, detail
    assert serving.evaluated == [32, 32]  # evaluated once, when every gate had its minimum
    assert sum(clock.waits) < LIMITS["shadow_window_s"]


def test_a_slow_candidate_fails_latency_once_the_sample_is_large_enough() -> None:
    clock = FakeClock()
    serving = FakeServing(clock, per_tick=10, slow_candidate=5.0)  # 10ms vs budget 2*2ms + 2ms
    passed, detail = _check(serving, clock, LIMITS)
    assert not passed and "latency p95 10.00ms > 6.00ms" in detail, detail


def test_three_samples_never_fail_a_good_update_on_latency_when_the_window_ends() -> None:
    """The issue's case: candidate p95 2.76ms > 2.28ms budget on 3 live samples, no golden set."""
    clock = FakeClock()
    serving = FakeServing(clock, per_tick=0.3, slow_candidate=3.0)  # type: ignore[arg-type]
    passed, detail = _check(serving, clock, LIMITS)
    assert passed, detail
    assert "latency: not enough data (n=6 < 30), passed with warning by policy" in detail
    assert "agreement: not enough data (n=6 < 16), passed with warning by policy" in detail
    assert sum(clock.waits) >= LIMITS["shadow_window_s"]  # waited the whole window first
    assert serving.evaluated == [6, 6]


def test_policy_fail_is_honoured_and_no_inputs_at_all_skips() -> None:
    clock = FakeClock()
    strict = {**LIMITS, "insufficient_latency": 0.0, "shadow_window_s": 2.0}
    passed, detail = _check(FakeServing(clock, per_tick=1), clock, strict)
    assert not passed and "latency: not enough data (n=4 < 30), failed by policy" in detail, detail
    clock = FakeClock()
    passed, detail = _check(FakeServing(clock, per_tick=0), clock, {**LIMITS, "shadow_window_s": 1.0})
    assert passed and "shadow skipped" in detail and "not enough data (n=0 < 30)" in detail


def test_golden_inputs_top_up_so_nothing_waits() -> None:
    clock = FakeClock()
    golden = GoldenSet([{"x": np.full((1, 4), i, dtype=np.float32)} for i in range(40)], np.arange(40) % 4)
    passed, detail = _check(FakeServing(clock, per_tick=4), clock, LIMITS, golden)
    assert passed and "source=live+golden" in detail and clock.waits == []


def test_readiness_reports_not_enough_data() -> None:
    ready = gates.shadow_readiness(3, 1.0, LIMITS)
    assert not ready.ready and ready.detail.startswith("not enough data (n=3 < 30)")
    assert gates.shadow_readiness(3, 10.0, LIMITS).ready
    assert gates.shadow_readiness(30, 0.0, LIMITS).ready


def test_shadow_verdict_judges_each_gate_on_its_own_minimum() -> None:
    kw: dict[str, Any] = {"agreement": 0.1, "distance": 0.9, "p95_current_s": 0.001, "p95_candidate_s": 0.5}
    # agreement has its 16 samples and fails; latency has only 20 of 30: warning, not a failure
    verdict = gates.shadow_verdict(**kw, limits=LIMITS, samples=20, latency_samples=20)
    assert not verdict.passed and "agreement 0.100 < 0.900" in verdict.detail
    assert "latency p95" not in verdict.detail and "latency: not enough data (n=20 < 30)" in verdict.detail
    assert not gates.shadow_verdict(**kw, limits=LIMITS).passed  # sample vouched by the caller


def test_watch_and_golden_minimums() -> None:
    assert gates.watch_verdict(requests=3, errors=0, limits=LIMITS, final=False) is None  # keep watching
    quiet = gates.watch_verdict(requests=3, errors=0, limits=LIMITS)
    assert quiet is not None and quiet.passed and "not enough data (n=3 < 20)" in quiet.detail
    broken = gates.watch_verdict(requests=3, errors=2, limits=LIMITS, final=False)
    assert broken is not None and not broken.passed  # errors are judged whatever the count
    enough = gates.watch_verdict(requests=100, errors=6, limits=LIMITS)
    assert enough is not None and not enough.passed
    small = gates.golden_verdict(0.0, 0.9, n=3, limits=LIMITS)
    assert small.passed and "golden: not enough data (n=3 < 20)" in small.detail
    assert not gates.golden_verdict(0.5, 0.9, n=64, limits=LIMITS).passed
    assert not gates.golden_verdict(0.0, 0.9, n=3, limits={**LIMITS, "insufficient_golden": 0.0}).passed
