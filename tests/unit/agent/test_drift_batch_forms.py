"""The monitor's batch forms against their one-feature, one-row definitions.

ScoreTable (all score maps by table lookup) against ScoreMap.transform (np.interp per feature);
EdgeCounts (decile bins) against np.searchsorted per feature; StuckRuns (runs of equal values
across batches of any size) against a row-by-row count.
"""

from __future__ import annotations

import numpy as np
import pytest

from agent.drift.sketch import EdgeCounts, ScoreTable, fit_score_map
from agent.drift.stuck import StuckRuns


def _columns(rng: np.random.Generator) -> list[np.ndarray]:
    n = 1000
    near_constant = np.zeros(n)
    near_constant[rng.choice(n, 5, replace=False)] = rng.normal(5.0, 1.0, 5)
    return [
        rng.normal(3.0, 0.01, n),
        np.exp(2.0 * rng.normal(size=n)),  # heavy right tail
        np.round(3.0 * rng.normal(size=n)),  # integer sensor: few knots, ties
        near_constant,  # one knot
        rng.standard_cauchy(n),  # very uneven knots: several per cell
    ]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_score_table_equals_the_score_maps_inside_at_and_beyond_the_knots(seed: int) -> None:
    rng = np.random.default_rng(seed)
    cols = _columns(rng)
    maps = tuple(fit_score_map(c) for c in cols)
    center, spread = rng.normal(size=len(maps)), rng.uniform(0.5, 2.0, len(maps))
    table = ScoreTable.pack(maps, center, spread)
    probes = []
    for c, m in zip(cols, maps, strict=True):
        at = np.concatenate([m.knots, np.nextafter(m.knots, np.inf), np.nextafter(m.knots, -np.inf)])
        beyond = np.array([m.knots[0] - 1e6, m.knots[-1] + 1e6])
        probes.append(np.concatenate([rng.choice(c, 300), at, beyond])[:400])
    x = np.column_stack([np.resize(p, 400) for p in probes])
    expected = np.column_stack([(m.transform(x[:, j]) - center[j]) / spread[j] for j, m in enumerate(maps)])
    np.testing.assert_allclose(table.transform(x), expected, rtol=0, atol=1e-9)


def test_edge_counts_are_the_per_feature_bins_of_searchsorted() -> None:
    rng = np.random.default_rng(4)
    ref = np.column_stack([rng.normal(size=500), np.round(rng.normal(size=500)), np.zeros(500)])
    edges = np.quantile(ref, np.linspace(0.1, 0.9, 9), axis=0).T
    counts = EdgeCounts(edges)
    x = np.column_stack([rng.normal(size=300), np.round(rng.normal(size=300)), rng.choice([0.0, 1.0], 300)])
    for i in range(0, 300, 25):
        counts.add(x[i : i + 25])
    expected = np.stack(
        [np.bincount(np.searchsorted(edges[j], x[:, j], side="right"), minlength=10) for j in range(3)]
    )
    np.testing.assert_array_equal(counts.take(), expected)
    np.testing.assert_array_equal(counts.take(), np.zeros((3, 10)))  # take() starts afresh


def test_stuck_runs_match_a_row_by_row_count_across_batches() -> None:
    rng = np.random.default_rng(5)
    n, block = 2000, 25
    x = np.column_stack([rng.integers(0, 2, n), rng.integers(0, 6, n), rng.normal(size=n)]).astype(float)
    x[700:1300, 2] = 0.5  # stuck
    limits = (12, 5, 4)
    runs, last, run = np.zeros_like(x, dtype=int), np.full(3, np.nan), np.zeros(3, dtype=int)
    for i, row in enumerate(x):  # the definition: length of the run of equal values ending here
        run = np.where(row == last, run + 1, 1)
        runs[i], last = run, row
    expected = []
    for b in range(n // block):
        peak = runs[b * block : (b + 1) * block].max(axis=0)
        expected += [(b, j, int(peak[j]), limits[j]) for j in range(3) if peak[j] >= limits[j]]
    stuck, got, pos = StuckRuns(limits), [], 0
    while pos < n:  # batches of 1 to 8 blocks
        rows = min(n - pos, block * int(rng.integers(1, 9)))
        got += [(pos // block + b, j, r, lim) for b, j, r, lim in stuck.push(x[pos : pos + rows], block)]
        pos += rows
    assert sorted(got) == sorted(expected)
    assert any(j == 2 for _, j, _, _ in got)


def test_stuck_runs_never_count_the_usual_value_of_a_near_constant_feature() -> None:
    x = np.zeros((400, 2))
    x[200:, 1] = 3.0
    hits = StuckRuns((50, 50), usual=np.array([0.0, 0.0])).push(x, 25)
    assert {j for _, j, _, _ in hits} == {1}  # the zeros of both are usual; the run of 3.0 is not
