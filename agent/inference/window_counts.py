"""The raw counts of one model's metrics window, as an in-process app hands them to the agent.

Owns `WindowCounts` (what `ModelMetrics.rotate_counts` gives and `ModelMetrics.merge` adds), the
bounds every window shares (`CONFIDENCE_BINS`, `MAX_CLASSES`, `MAX_MERGED_COUNT`) and
`check_counts`, which refuses a window no real accumulator produces. Does not accumulate
(model_metrics.py) or encode anything (agent.serving.rawframe).
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.inference.stats import BUCKET_COUNT

CONFIDENCE_BINS = 10
MAX_CLASSES = 1000
MAX_MERGED_COUNT = 1 << 32
"""Largest count (predictions, errors, one bin) a merged window may carry; more is refused."""


@dataclass(frozen=True)
class WindowCounts:
    """One model's raw counts over one window: what an in-process app hands to the agent."""

    predictions: int
    errors: int
    confidence_hist: tuple[int, ...]  # CONFIDENCE_BINS long, or empty: no classifier output
    class_counts: tuple[int, ...]  # trailing zeros trimmed
    confidence_sum: float
    confidence_sum_sq: float
    latency_buckets: tuple[tuple[int, int], ...]  # (index into the LatencyHistogram, count), non-zero
    latency_sum_ms: float
    latency_sum_sq_ms: float


def check_counts(counts: WindowCounts) -> None:
    """Refuse a window that no real accumulator produces (sent by a broken or hostile app).

    Raises:
        ValueError: names the first field out of range.
    """
    hist, classes = counts.confidence_hist, counts.class_counts
    if len(hist) not in (0, CONFIDENCE_BINS):
        raise ValueError(f"confidence histogram has {len(hist)} bins, not {CONFIDENCE_BINS}")
    if len(classes) > MAX_CLASSES or (classes and not hist):
        raise ValueError(f"{len(classes)} class counts (at most {MAX_CLASSES}, only with a histogram)")
    if any(not 0 <= i < BUCKET_COUNT for i, _ in counts.latency_buckets):
        raise ValueError(f"latency bucket index out of range 0..{BUCKET_COUNT - 1}")
    values = (counts.predictions, counts.errors, *hist, *classes, *(n for _, n in counts.latency_buckets))
    if any(not 0 <= v <= MAX_MERGED_COUNT for v in values):
        raise ValueError(f"a count is negative or over {MAX_MERGED_COUNT}")
    sums = (counts.confidence_sum, counts.confidence_sum_sq, counts.latency_sum_ms, counts.latency_sum_sq_ms)
    if any(not (is_finite(v) and v >= 0) for v in sums):
        raise ValueError("a sum is negative or not finite")
    # What the fleet server would refuse the whole window for (the agent's own counts with it):
    if sum(hist) > counts.predictions or sum(classes) > counts.predictions:
        raise ValueError("more histogram or class counts than predictions")
    if max(counts.confidence_sum, counts.confidence_sum_sq) > counts.predictions * (1 + 1e-9):
        raise ValueError("confidence sums above one per prediction")


def is_finite(v: float) -> bool:
    return v - v == 0.0  # False for nan and +/-inf
