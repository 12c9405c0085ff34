"""Quality gates of the commit protocol, as pure functions over arrays (no I/O, no clock).

- golden set: top-1 accuracy of the candidate on the labelled set shipped with the release;
- shadow: candidate vs current on the same live inputs: top-1 agreement, output-distribution
  distance (total variation between softmax outputs; 1 - cosine for embeddings) and latency p95;
- watch: error rate of the serving model after the switch.
Thresholds come from the release (`gates` in the signed target) over these defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

DEFAULTS: dict[str, float] = {
    "min_agreement": 0.9,
    "max_distance": 0.2,
    "max_latency_ratio": 2.0,
    "latency_slack_ms": 2.0,  # absolute allowance so sub-millisecond models are not judged on noise
    "watch_s": 3.0,
    "max_error_rate": 0.05,
    "min_shadow_samples": 16,
}


def thresholds(release: Mapping[str, float]) -> dict[str, float]:
    return {**DEFAULTS, **{k: float(v) for k, v in release.items() if k in DEFAULTS}}


@dataclass(frozen=True)
class Verdict:
    passed: bool
    detail: str


def golden_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    if len(labels) == 0:
        return 0.0
    return float(np.mean(np.argmax(logits.reshape(len(labels), -1), axis=-1) == labels.reshape(-1)))


def golden_verdict(accuracy: float, threshold: float) -> Verdict:
    ok = accuracy >= threshold
    return Verdict(ok, f"golden accuracy {accuracy:.4f} {'>=' if ok else '<'} threshold {threshold:.4f}")


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return out


def agreement_and_distance(current: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    """Top-1 agreement and mean distance between two batches of outputs of the same shape."""
    a = current.reshape(current.shape[0], -1).astype(np.float64)
    b = candidate.reshape(candidate.shape[0], -1).astype(np.float64)
    if a.shape != b.shape or a.shape[0] == 0:
        return 0.0, 1.0
    looks_like_logits = a.shape[1] <= 1000
    if looks_like_logits and a.shape[1] > 1:
        agree = float(np.mean(np.argmax(a, axis=1) == np.argmax(b, axis=1)))
        distance = float(np.mean(0.5 * np.abs(_softmax(a) - _softmax(b)).sum(axis=1)))
        return agree, distance
    cos = (a * b).sum(axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return float(np.mean(cos >= 0.99)), float(np.mean(1.0 - cos))


def p95(values_s: list[float]) -> float:
    return float(np.percentile(np.asarray(values_s), 95)) if values_s else 0.0


def shadow_verdict(
    *,
    agreement: float,
    distance: float,
    p95_current_s: float,
    p95_candidate_s: float,
    limits: Mapping[str, float],
) -> Verdict:
    budget = p95_current_s * limits["max_latency_ratio"] + limits["latency_slack_ms"] / 1e3
    problems = []
    if agreement < limits["min_agreement"]:
        problems.append(f"agreement {agreement:.3f} < {limits['min_agreement']:.3f}")
    if distance > limits["max_distance"]:
        problems.append(f"distance {distance:.3f} > {limits['max_distance']:.3f}")
    if p95_candidate_s > budget:
        problems.append(f"latency p95 {p95_candidate_s * 1e3:.2f}ms > {budget * 1e3:.2f}ms")
    summary = (
        f"agreement={agreement:.3f} distance={distance:.3f} "
        f"p95_ms current={p95_current_s * 1e3:.2f} candidate={p95_candidate_s * 1e3:.2f}"
    )
    return Verdict(not problems, "; ".join(problems) or summary)


def watch_verdict(*, requests: int, errors: int, limits: Mapping[str, float]) -> Verdict:
    rate = errors / requests if requests else 0.0
    ok = rate <= limits["max_error_rate"]
    return Verdict(
        ok, f"watch error rate {rate:.3f} over {requests} requests (max {limits['max_error_rate']:.3f})"
    )
