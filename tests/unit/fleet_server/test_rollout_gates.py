"""Gate statistics: the install gate, the mixture SPRT on rates and means, the permutation G-test
with alpha spending, and simulated rollouts: false halts under H0 over 20 looks, power against a
collapsed confidence and a two-class label permutation at ~20 canary devices."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import numpy as np
import pytest
from scipy import stats as st
from threadpoolctl import threadpool_limits

from fleet_server.errors import InvalidRequestError
from fleet_server.rollouts.gates import (
    MeanSketch,
    RateSketch,
    Verdict,
    Worse,
    histogram_gtest,
    install_gate,
    mean_msprt,
    rate_msprt,
    spent_alpha,
)
from fleet_server.rollouts.stats import chi2_sf, f_sf, norm_sf

# ------------------------------------------------------------------ pure pieces


def test_tails_match_scipy() -> None:
    for x, df in itertools.product([0.01, 0.7, 3, 12, 60, 400], [1, 2, 5, 9, 40]):
        assert chi2_sf(x, df) == pytest.approx(st.chi2.sf(x, df), rel=1e-9, abs=1e-300)
    for x, d1, d2 in itertools.product([0.05, 1, 4, 30], [1, 4, 9], [3, 40, 1000]):
        assert f_sf(x, d1, d2) == pytest.approx(st.f.sf(x, d1, d2), rel=1e-9, abs=1e-300)
    assert norm_sf(1.96) == pytest.approx(st.norm.sf(1.96), rel=1e-12)


def test_install_gate() -> None:
    ok = install_gate(batch_size=20, committed=20, failed=0, silent=0, max_failure_rate=0.1)
    assert ok.verdict is Verdict.PASS
    waiting = install_gate(batch_size=20, committed=15, failed=1, silent=0, max_failure_rate=0.1)
    assert waiting.verdict is Verdict.NOT_ENOUGH_DATA
    # Silent devices count as failures, and a breach is called before the batch settles.
    early = install_gate(batch_size=20, committed=5, failed=1, silent=2, max_failure_rate=0.1)
    assert early.verdict is Verdict.FAIL
    assert "1 failed, 2 silent" in early.detail
    edge = install_gate(batch_size=20, committed=18, failed=1, silent=1, max_failure_rate=0.1)
    assert edge.verdict is Verdict.PASS  # 2 of 20 = exactly the budget
    with pytest.raises(InvalidRequestError, match="add up"):
        install_gate(batch_size=5, committed=5, failed=1, silent=0, max_failure_rate=0.1)


def _means(rng: np.random.Generator, n: int, mu: float, per: int = 200, sd: float = 0.1) -> list[MeanSketch]:
    return [MeanSketch.of(rng.normal(mu, sd, per).tolist()) for _ in range(n)]


def test_msprt_direction_margin_and_running_min() -> None:
    rng = np.random.default_rng(0)
    control = _means(rng, 30, 0.85)
    worse = mean_msprt(_means(rng, 20, 0.70), control, margin=0.02, alpha=0.01)
    assert worse.verdict is Verdict.FAIL and worse.effect < 0 and worse.p_value < 1e-6
    assert worse.e_value is not None and worse.e_value > 1e6
    better = mean_msprt(_means(rng, 20, 0.95), control, margin=0.02, alpha=0.01)
    assert better.verdict is Verdict.PASS and better.p_value == 1.0  # one-sided: better is never a halt
    within_margin = mean_msprt(_means(rng, 20, 0.84, per=5000), control, margin=0.03, alpha=0.01)
    assert within_margin.verdict is Verdict.PASS
    # The always-valid p never goes back up once evidence was seen.
    again = mean_msprt(_means(rng, 20, 0.85), control, alpha=0.01, prev_p=0.002)
    assert again.p_value == 0.002 and again.verdict is Verdict.FAIL
    # What the console plots per look: each arm's mean, whose difference is the effect.
    assert worse.canary_value is not None and worse.control_value is not None
    assert worse.canary_value == pytest.approx(0.70, abs=0.02)
    assert worse.control_value == pytest.approx(0.85, abs=0.02)
    assert worse.canary_value - worse.control_value == pytest.approx(worse.effect)
    latency = mean_msprt(
        _means(rng, 20, 12.0, sd=2),
        _means(rng, 30, 10.0, sd=2),
        worse=Worse.HIGHER,
        name="latency_p95_ms",
        margin=0.5,
        tau=1.0,
        alpha=0.01,
    )
    assert latency.verdict is Verdict.FAIL and latency.effect > 0
    few = mean_msprt(_means(rng, 3, 0.5), control, min_devices=5)
    assert few.verdict is Verdict.NOT_ENOUGH_DATA and "devices (3, 30)" in few.detail
    with pytest.raises(InvalidRequestError):
        mean_msprt(control, control, tau=0)
    with pytest.raises(InvalidRequestError):
        mean_msprt(control, control, alpha=1.5)


def test_a_far_worse_canary_beside_a_noisy_control_is_never_passed_on_one_look() -> None:
    # The demo's case: mean confidence 0.17 on the canary vs ~0.69 on a control whose devices see
    # different inputs (large between-device spread); harm is not significant yet (p > alpha), and
    # that alone must not promote the release.
    rng = np.random.default_rng(1)
    canary = _means(rng, 2, 0.17, sd=0.05)
    control = [*_means(rng, 2, 0.95, sd=0.05), *_means(rng, 2, 0.45, sd=0.05)]
    r = mean_msprt(canary, control, margin=0.02, alpha=0.05 / 6, min_devices=1)
    assert r.p_value > r.threshold  # harm not significant at this look: the case that used to pass
    assert r.verdict is Verdict.INCONCLUSIVE
    a, b = _means(rng, 20, 0.85, per=5000), _means(rng, 30, 0.85, per=5000)
    good = mean_msprt(a, b, margin=0.02, alpha=0.01)
    assert good.verdict is Verdict.PASS and "non-inferiority" in good.detail


def test_rate_msprt_uses_devices_not_predictions() -> None:
    control = [RateSketch(4, 200) for _ in range(30)]
    canary_bad = [RateSketch(30, 200) for _ in range(20)]
    assert rate_msprt(canary_bad, control, alpha=0.01).verdict is Verdict.FAIL
    # Same pooled rate as control but concentrated on a few devices: over-dispersed, not a breach.
    lumpy = [RateSketch(40, 200) if i < 2 else RateSketch(0, 200) for i in range(20)]
    result = rate_msprt(lumpy, control, alpha=0.01)
    # ...nor evidence of safety: with this spread the question stays open (the engine keeps looking)
    assert result.verdict is Verdict.INCONCLUSIVE
    none = rate_msprt([RateSketch(0, 0)] * 20, control)
    assert none.verdict is Verdict.NOT_ENOUGH_DATA


def test_alpha_spending_adds_up_to_alpha() -> None:
    spent = [spent_alpha(k, 20, 0.05) for k in range(1, 21)]
    assert math.fsum(spent) == pytest.approx(0.05)
    assert all(x > 0 for x in spent) and spent[0] > spent[-1]
    assert spent_alpha(21, 20, 0.05) == 0.0
    with pytest.raises(InvalidRequestError):
        spent_alpha(0, 20, 0.05)


def test_histogram_gtest_basics() -> None:
    same = [[50, 30, 20]] * 10
    r = histogram_gtest(same, same, look=1, max_looks=5)
    assert r.verdict is Verdict.PASS and r.effect == 0
    shifted = [[20, 30, 50]] * 10
    r = histogram_gtest(shifted, same, look=1, max_looks=5)
    assert r.verdict is Verdict.FAIL and r.effect == pytest.approx(0.3)
    assert r.p_value == pytest.approx(1 / 2001)
    # plotted canary vs control: the share of the bin that moved most (bin 0 or 2, each by 0.3)
    assert r.canary_value is not None and r.control_value is not None and "moved most" in r.detail
    assert sorted([r.canary_value, r.control_value]) == pytest.approx([0.2, 0.5])
    small_effect = [[48, 30, 22]] * 10
    assert histogram_gtest(small_effect, same, look=1, max_looks=5).verdict is Verdict.PASS
    assert histogram_gtest(shifted[:2], same, look=1, max_looks=5).verdict is Verdict.NOT_ENOUGH_DATA
    for bad in ([[1, 2]] * 10, [[-1, 2, 3]] * 10, [[float("nan"), 1, 1]] * 10):
        with pytest.raises(InvalidRequestError):
            histogram_gtest(bad, same, look=1, max_looks=5)


# ------------------------------------------------------------------ simulated rollouts

BASE = np.array([0.4, 0.1, 0.2, 0.15, 0.15])  # class frequencies of the fleet's inputs
ALPHA = 0.05  # per rollout, split over the four gates
LOOKS, WINDOW = 20, 30  # report windows; predictions per device per window
CANARY, CONTROL = 20, 40


def _rollout(rng: np.random.Generator, scenario: str) -> tuple[int | None, list[str]]:
    """One simulated canary: heterogeneous devices (own class mix, own confidence level, own error
    rate); the canary's model differs from the control's as `scenario` says. Returns the look at
    which a gate halted it (None: never) and which gates failed."""
    n, can = CANARY + CONTROL, slice(0, CANARY)
    pi = rng.dirichlet(BASE * 30, size=n)
    mu = np.clip(0.85 + rng.normal(0, 0.04, n), 0.6, 0.97)
    err = rng.beta(4, 196, n)
    if scenario == "collapse":  # loads, passes the golden set, but live confidence collapses
        mu[can] -= 0.3
    elif scenario == "permute":  # trained with classes 0 and 1 swapped
        pi[can] = pi[can][:, [1, 0, 2, 3, 4]]
    elif scenario == "good":  # retrained: slightly different predictions
        mu[can] -= 0.01
        moved = pi[can, 2] * 0.03
        pi[can, 2] -= moved
        pi[can, 3] += moved
        err[can] *= 1.1
    a = ALPHA / 4
    classes, hist = np.zeros((n, 5)), np.zeros((n, 10))
    s, ss, ev = np.zeros(n), np.zeros(n), np.zeros(n)
    p_conf = p_err = 1.0
    for look in range(1, LOOKS + 1):
        classes += rng.multinomial(WINDOW, pi)
        x = rng.beta(mu[:, None] * 8, (1 - mu[:, None]) * 8, size=(n, WINDOW))
        hist += (np.minimum((x * 10).astype(int), 9)[..., None] == np.arange(10)).sum(axis=1)
        s, ss, ev = s + x.sum(1), ss + (x * x).sum(1), ev + rng.binomial(WINDOW, err)
        m = [MeanSketch(look * WINDOW, float(s[d]), float(ss[d])) for d in range(n)]
        r = [RateSketch(int(ev[d]), look * WINDOW) for d in range(n)]
        kw = {"min_devices": 10, "min_samples": 200}
        results = [
            conf := mean_msprt(m[:CANARY], m[CANARY:], margin=0.02, tau=0.05, alpha=a, prev_p=p_conf, **kw),
            errs := rate_msprt(r[:CANARY], r[CANARY:], margin=0.005, tau=0.01, alpha=a, prev_p=p_err, **kw),
            histogram_gtest(hist[:CANARY], hist[CANARY:], look=look, max_looks=LOOKS, alpha=a, **kw),
            histogram_gtest(
                classes[:CANARY],
                classes[CANARY:],
                name="class_mix",
                look=look,
                max_looks=LOOKS,
                alpha=a,
                **kw,
            ),
        ]
        p_conf, p_err = conf.p_value, errs.p_value
        failed = [g.gate for g in results if g.verdict is Verdict.FAIL]
        if failed:
            return look, failed
    return None, []


def _many(scenario: str, runs: int, seed: int) -> Iterator[tuple[int | None, list[str]]]:
    rng = np.random.default_rng(seed)
    with threadpool_limits(1):  # tiny matrices: BLAS threads only contend on a loaded machine
        for _ in range(runs):
            yield _rollout(rng, scenario)


def _slack(p: float, runs: int) -> float:
    return 3 * math.sqrt(p * (1 - p) / runs)  # three Monte-Carlo standard errors


def test_false_halts_under_h0_over_20_looks_stay_within_alpha() -> None:
    runs = 500
    halts = [look for look, _ in _many("h0", runs, seed=11) if look is not None]
    rate = len(halts) / runs
    print(f"H0: {len(halts)}/{runs} rollouts halted over {LOOKS} looks = {rate:.3f} (alpha {ALPHA})")
    assert rate <= ALPHA + _slack(ALPHA, runs)


def test_a_good_retrained_model_is_not_halted() -> None:
    runs = 200
    halts = [look for look, _ in _many("good", runs, seed=12) if look is not None]
    print(f"good retrained: {len(halts)}/{runs} halted")
    assert len(halts) / runs <= ALPHA + _slack(ALPHA, runs)


@pytest.mark.parametrize(("scenario", "gate"), [("collapse", "confidence_mean"), ("permute", "class_mix")])
def test_silently_bad_models_are_halted_within_three_windows(scenario: str, gate: str) -> None:
    runs = 100
    outcomes = list(_many(scenario, runs, seed=13))
    looks = [look for look, _ in outcomes if look is not None]
    print(f"{scenario}: {len(looks)}/{runs} halted, looks {np.bincount(looks).tolist()}")
    assert len(looks) / runs >= 0.95
    assert max(looks) <= 3  # the minimum sample (10 devices, 200 predictions per arm) is reached at look 1
    assert sum(gate in failed for _, failed in outcomes) >= 0.95 * runs


def test_default_gate_config_lets_a_histogram_gate_fail_at_every_look() -> None:
    """A permutation p-value is at least 1/(permutations+1): under the defaults it must be able to
    fall below the alpha each look gets, or a class-mix shift could never halt a rollout."""
    from fleet_server.rollouts.gates import spent_alpha
    from fleet_server.rollouts.schemas import GateConfig

    cfg = GateConfig()
    per_gate = cfg.alpha / len(cfg.metrics)
    smallest_p = 1 / (cfg.permutations + 1)
    assert all(smallest_p < spent_alpha(k, cfg.max_looks, per_gate) for k in range(1, cfg.max_looks + 1))
