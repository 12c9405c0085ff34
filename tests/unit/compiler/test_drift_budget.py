"""`build --drift-budget`: the shipped drift reference's false-alarm budget, checked before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from compiler.build import MAX_DRIFT_BUDGET, MIN_DRIFT_BUDGET, BuildRequest, build
from compiler.errors import InputError


@pytest.mark.parametrize("budget", [0.0, -1.0, MIN_DRIFT_BUDGET / 2, MAX_DRIFT_BUDGET * 2, float("nan")])
def test_a_budget_outside_the_range_is_refused_before_anything_is_read(tmp_path: Path, budget: float) -> None:
    request = BuildRequest(
        "missing.onnx", ("generic-x86",), tmp_path / "c.npz", tmp_path / "e.npz", tmp_path / "out",
        drift_budget_per_10k=budget,
    )  # fmt: skip
    with pytest.raises(InputError, match=r"drift budget .* false drift episodes per 10,000 samples"):
        build(request)
    assert not (tmp_path / "out").exists()
