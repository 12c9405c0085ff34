"""The two pre-switch quality gates run against the serving stack: golden set and shadow run.

`golden_check` runs the candidate on the labelled set shipped with the release and compares its
top-1 accuracy with the release's threshold. `shadow_check` runs current and candidate on the same
inputs (live traffic captured by the serving layer; topped up from the golden inputs when traffic
is thin) and compares agreement, output distance and latency p95 (`gates.py` holds the arithmetic
and the minimum samples). Without enough inputs the shadow run waits for live traffic within the
release's shadow window (through the injected `clock` and `wait` ports), then judges what it has
under the stated policy. Each returns (passed, detail) and never raises for model failures: a
model that cannot be evaluated fails its gate; `shadow_check` returns None when `wait` reports
that the agent is stopping.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.errors import InferenceError, SlotError
from agent.ota import gates
from agent.ota.serving import Batch, ServingPort


@dataclass(frozen=True)
class GoldenSet:
    batches: list[Batch]  # one sample per batch
    labels: np.ndarray


def load_golden(path: Path) -> GoldenSet:
    """Arrays ``input:<name>`` (batch first) and ``labels`` from an .npz (no pickles).

    A 0-d array (a sample rate) is given whole with every sample.

    Raises:
        ValueError, KeyError, OSError: not a golden set.
    """
    with np.load(path, allow_pickle=False) as npz:
        names = [k for k in npz.files if k.startswith("input:")]
        labels = npz["labels"]
        arrays = {k.removeprefix("input:"): npz[k] for k in names}
    if not arrays or any(v.ndim and len(v) != len(labels) for v in arrays.values()):
        raise ValueError("golden set inputs and labels disagree")
    return GoldenSet(
        [{k: v if v.ndim == 0 else v[i : i + 1] for k, v in arrays.items()} for i in range(len(labels))],
        labels,
    )


def _first_output(outputs: list[dict[str, np.ndarray]]) -> np.ndarray:
    return np.concatenate([next(iter(o.values())) for o in outputs])


async def golden_check(
    serving: ServingPort, golden: GoldenSet | None, threshold: float, limits: Mapping[str, float]
) -> tuple[bool, str]:
    if golden is None:
        return True, "release has no golden set"
    try:
        outputs, _ = await serving.evaluate("candidate", golden.batches)
    except (InferenceError, SlotError) as err:
        return False, f"golden set not evaluable: {err}"
    accuracy = gates.golden_accuracy(_first_output(outputs), golden.labels)
    verdict = gates.golden_verdict(accuracy, threshold, n=len(golden.labels), limits=limits)
    return verdict.passed, verdict.detail


Clock = Callable[[], float]  # monotonic seconds
Wait = Callable[[float], Awaitable[bool]]  # sleep up to s seconds; True: the agent is stopping


def _inputs(serving: ServingPort, golden: GoldenSet | None, need: int) -> tuple[list[Batch], str]:
    batches, source = serving.live_inputs(), "live"
    if len(batches) < need and golden is not None:
        batches, source = batches + golden.batches, "live+golden"
    return batches, source


async def shadow_check(
    serving: ServingPort,
    golden: GoldenSet | None,
    limits: Mapping[str, float],
    *,
    clock: Clock,
    wait: Wait,
    measured: Callable[[float, int], None] | None = None,
) -> tuple[bool, str] | None:
    """Shadow gate; `measured` (if given) receives the top-1 agreement and the rows it compared."""
    if serving.serving() is None:
        return True, "nothing serving: no shadow comparison possible"
    start, need = clock(), gates.shadow_needed(limits)
    while True:
        batches, source = _inputs(serving, golden, need)
        ready = gates.shadow_readiness(len(batches), clock() - start, limits)
        if ready.ready:
            break
        if await wait(max(0.01, limits["shadow_poll_s"])):
            return None
    if not batches:
        return True, f"no live or golden inputs: shadow skipped ({ready.detail})"
    try:
        current, t_cur = await serving.evaluate("current", batches)
        candidate, t_cand = await serving.evaluate("candidate", batches)
    except (InferenceError, SlotError) as err:
        return False, f"shadow run failed: {err}"
    first_current = _first_output(current)
    agreement, distance = gates.agreement_and_distance(first_current, _first_output(candidate))
    if measured is not None:
        measured(agreement, int(first_current.shape[0]))
    verdict = gates.shadow_verdict(
        agreement=agreement, distance=distance, p95_current_s=gates.p95(t_cur),
        p95_candidate_s=gates.p95(t_cand), limits=limits, samples=len(batches),
        latency_samples=min(len(t_cur), len(t_cand)),
    )  # fmt: skip
    return verdict.passed, f"{verdict.detail} samples={len(batches)} source={source}"
