"""Quality gates of the commit protocol, as pure functions over arrays (no I/O, no clock).

- golden set: top-1 accuracy of the candidate on the labelled set shipped with the release;
- shadow: candidate vs current on the same live inputs: top-1 agreement, output-distribution
  distance (total variation between softmax outputs; 1 - cosine for embeddings) and latency p95;
- watch: error rate of the serving model after the switch.
Thresholds come from the release (`gates` in the signed target) over these defaults.

Every gate has a minimum sample size (``min_*``). With fewer samples a gate does not judge: it
says "not enough data (n=3 < 30)" and the caller keeps collecting within its window
(``shadow_window_s`` for the shadow run, ``watch_max_s`` for the watch). When the window ends
still short, the stated policy decides (``insufficient_*``: 1 = pass with a warning in the
detail, 0 = fail); by default a gate never fails a good update on a handful of samples. Hard
evidence is still judged: a watch that saw serving errors fails on them whatever the count.
`shadow_readiness` and `watch_verdict` take the elapsed time from the caller (no clock here).
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
    "min_shadow_samples": 16,  # agreement and output distance
    "min_latency_samples": 30,  # latency p95 of each model
    "min_golden_samples": 20,
    "min_watch_requests": 20,
    "shadow_window_s": 10.0,  # how long the shadow run waits for enough live inputs
    "shadow_poll_s": 0.5,
    "watch_max_s": 0.0,  # the watch may run on until this (when > watch_s) to see enough requests
    "insufficient_agreement": 1.0,  # window over, too few samples: 1 pass with warning, 0 fail
    "insufficient_latency": 1.0,
    "insufficient_golden": 1.0,
    "insufficient_watch": 1.0,  # applies only when the watch saw no errors
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


def not_enough(n: int, minimum: float) -> str:
    return f"not enough data (n={n} < {minimum:g})"


def _insufficient(gate: str, n: int, minimum: float, policy: float) -> tuple[bool, str]:
    """The stated policy for a gate whose window ended short of its minimum sample."""
    passed = policy >= 1.0
    return (
        passed,
        f"{gate}: {not_enough(n, minimum)}, {'passed with warning' if passed else 'failed'} by policy",
    )


def golden_verdict(
    accuracy: float, threshold: float, *, n: int | None = None, limits: Mapping[str, float] | None = None
) -> Verdict:
    if n is not None and limits is not None and n < limits["min_golden_samples"]:
        passed, detail = _insufficient(
            "golden", n, limits["min_golden_samples"], limits["insufficient_golden"]
        )
        return Verdict(passed, f"{detail} (accuracy {accuracy:.4f}, threshold {threshold:.4f})")
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


@dataclass(frozen=True)
class Readiness:
    """Whether the shadow run should evaluate now (`ready`), and why it waits otherwise."""

    ready: bool
    detail: str


def shadow_needed(limits: Mapping[str, float]) -> int:
    """Samples the shadow run wants before judging every gate."""
    return int(max(limits["min_shadow_samples"], limits["min_latency_samples"]))


def shadow_readiness(samples: int, elapsed_s: float, limits: Mapping[str, float]) -> Readiness:
    """Evaluate once every gate has its minimum sample, or when the shadow window is over."""
    need = shadow_needed(limits)
    if samples >= need:
        return Readiness(True, f"samples={samples}")
    if elapsed_s >= limits["shadow_window_s"]:
        return Readiness(True, f"window {limits['shadow_window_s']:g}s over with {not_enough(samples, need)}")
    return Readiness(
        False, f"{not_enough(samples, need)}, waiting {elapsed_s:.1f}/{limits['shadow_window_s']:g}s"
    )


def shadow_verdict(
    *,
    agreement: float,
    distance: float,
    p95_current_s: float,
    p95_candidate_s: float,
    limits: Mapping[str, float],
    samples: int | None = None,
    latency_samples: int | None = None,
) -> Verdict:
    """Judge agreement/distance and latency, each only on its minimum sample (else its policy).

    `samples` / `latency_samples` None: the caller vouches the sample is large enough.
    """
    budget = p95_current_s * limits["max_latency_ratio"] + limits["latency_slack_ms"] / 1e3
    problems: list[str] = []
    warnings: list[str] = []

    def short(gate: str, n: int | None, minimum: float, policy: float) -> bool:
        if n is None or n >= minimum:
            return False
        passed, detail = _insufficient(gate, n, minimum, policy)
        (warnings if passed else problems).append(detail)
        return True

    if not short("agreement", samples, limits["min_shadow_samples"], limits["insufficient_agreement"]):
        if agreement < limits["min_agreement"]:
            problems.append(f"agreement {agreement:.3f} < {limits['min_agreement']:.3f}")
        if distance > limits["max_distance"]:
            problems.append(f"distance {distance:.3f} > {limits['max_distance']:.3f}")
    latency_short = short(
        "latency", latency_samples, limits["min_latency_samples"], limits["insufficient_latency"]
    )
    if not latency_short and p95_candidate_s > budget:
        problems.append(f"latency p95 {p95_candidate_s * 1e3:.2f}ms > {budget * 1e3:.2f}ms")
    summary = (
        f"agreement={agreement:.3f} distance={distance:.3f} "
        f"p95_ms current={p95_current_s * 1e3:.2f} candidate={p95_candidate_s * 1e3:.2f}"
    )
    if problems:
        return Verdict(False, "; ".join(problems + warnings))
    return Verdict(True, "; ".join([summary, *warnings]))


def watch_verdict(
    *, requests: int, errors: int, limits: Mapping[str, float], final: bool = True
) -> Verdict | None:
    """The watch gate; None: too few requests and the watch may go on (`final` False)."""
    rate = errors / requests if requests else 0.0
    ok = rate <= limits["max_error_rate"]
    judged = f"watch error rate {rate:.3f} over {requests} requests (max {limits['max_error_rate']:.3f})"
    minimum = limits["min_watch_requests"]
    if requests >= minimum or (errors and not ok):
        return Verdict(ok, judged)  # enough requests, or errors that fail even the short sample
    if not final:
        return None
    passed, detail = _insufficient("watch", requests, minimum, limits["insufficient_watch"])
    return Verdict(passed, f"{detail}; {judged}")
