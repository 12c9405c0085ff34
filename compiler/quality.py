"""Quality of an artifact's outputs against the reference model's outputs (pure numpy).

Owns the metrics the validation gate uses: top-1 accuracy (when labels exist), top-1 agreement with
the reference, and, for embedding models, mean/min cosine to the reference embeddings and
nearest-neighbour top-1 agreement; the 95 % Wilson interval of every agreement-like rate (a rate
measured on 50 samples is known only to about +-0.1, and reports must say so); the mean absolute
output difference. A one-column output (a sigmoid probability, a score) is judged as a binary
decision at 0.5. Does not run models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Quality:
    """Accuracy-like numbers in [0, 1]; None where not applicable."""

    accuracy: float | None
    agreement: float
    cosine_mean: float | None = None
    cosine_min: float | None = None
    nn_agreement: float | None = None
    samples: int = 0
    agreement_interval: tuple[float, float] | None = None  # 95 % Wilson
    accuracy_interval: tuple[float, float] | None = None
    mean_abs_diff: float | None = None  # mean |output - reference| over every output value


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial rate (95 % by default); (0, 1) when n is 0."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def classification(outputs: np.ndarray, reference: np.ndarray, labels: np.ndarray | None) -> Quality:
    """Top-1 accuracy vs labels and top-1 agreement vs the reference (binary at 0.5 for one column)."""
    pred, ref = _decision(outputs), _decision(reference)
    n = len(pred)
    agree = float((pred == ref).mean())  # per position for dense outputs ([n, C, H, W])
    hits = round(agree * n)
    acc = acc_ci = None
    if labels is not None:
        acc = float((pred == labels).mean())
        acc_ci = wilson(round(acc * n), n)
    return Quality(
        accuracy=acc,
        agreement=agree,
        samples=n,
        agreement_interval=wilson(hits, n),
        accuracy_interval=acc_ci,
        mean_abs_diff=_mad(outputs, reference),
    )


def embedding(outputs: np.ndarray, reference: np.ndarray) -> Quality:
    """Cosine to the reference embeddings, and agreement of each sample's nearest neighbour."""
    a, b = _unit(outputs), _unit(reference)
    cos = (a * b).sum(axis=1)
    hits = int((_nearest(a) == _nearest(b)).sum())
    n = len(a)
    return Quality(
        accuracy=None,
        agreement=hits / n,
        cosine_mean=float(cos.mean()),
        cosine_min=float(cos.min()),
        nn_agreement=hits / n,
        samples=n,
        agreement_interval=wilson(hits, n),
        mean_abs_diff=_mad(outputs, reference),
    )


def consistency(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(min per-sample cosine, max absolute difference) between two runs of the same model."""
    cos = (_unit(a) * _unit(b)).sum(axis=1)
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return float(cos.min()), float(diff.max()) if diff.size else 0.0


def _decision(x: np.ndarray) -> np.ndarray:
    if x.ndim > 2:
        dense: np.ndarray = x.argmax(axis=1)
        return dense
    flat = x.reshape(len(x), -1)
    if flat.shape[1] == 1:
        out: np.ndarray = (flat[:, 0] > 0.5).astype(np.int64)
        return out
    top: np.ndarray = flat.argmax(axis=1)
    return top


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def evaluate(outputs: np.ndarray, reference: np.ndarray, labels: np.ndarray | None, task: str) -> Quality:
    """Dispatch on task: "classification" or "embedding"."""
    if task == "embedding":
        return embedding(outputs, reference)
    return classification(outputs, reference, labels)


def infer_task(reference: np.ndarray, labels: np.ndarray | None) -> str:
    """Classification when labels exist or the output looks like logits, else embedding."""
    if labels is not None:
        return "classification"
    return "embedding" if reference.ndim == 2 and reference.shape[1] >= 64 else "classification"


def _unit(x: np.ndarray) -> np.ndarray:
    flat = x.reshape(len(x), -1).astype(np.float64)
    unit: np.ndarray = flat / (np.linalg.norm(flat, axis=1, keepdims=True) + 1e-12)
    return unit


def _nearest(unit: np.ndarray) -> np.ndarray:
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)
    nearest: np.ndarray = sim.argmax(axis=1)
    return nearest
