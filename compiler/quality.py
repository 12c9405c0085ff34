"""Quality of an artifact's outputs against the reference model's outputs (pure numpy).

Owns the metrics the validation gate uses: top-1 accuracy (when labels exist), top-1 agreement with
the reference, and, for embedding models, mean/min cosine to the reference embeddings and
nearest-neighbour top-1 agreement. Does not run models.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Quality:
    """Accuracy-like numbers in [0, 1]; None where not applicable."""

    accuracy: float | None
    agreement: float
    cosine_mean: float | None = None
    cosine_min: float | None = None
    nn_agreement: float | None = None


def classification(outputs: np.ndarray, reference: np.ndarray, labels: np.ndarray | None) -> Quality:
    """Top-1 accuracy vs labels and top-1 agreement vs the reference logits."""
    pred = outputs.argmax(axis=1)
    acc = float((pred == labels).mean()) if labels is not None else None
    return Quality(accuracy=acc, agreement=float((pred == reference.argmax(axis=1)).mean()))


def embedding(outputs: np.ndarray, reference: np.ndarray) -> Quality:
    """Cosine to the reference embeddings, and agreement of each sample's nearest neighbour."""
    a, b = _unit(outputs), _unit(reference)
    cos = (a * b).sum(axis=1)
    nn = float((_nearest(a) == _nearest(b)).mean())
    return Quality(
        accuracy=None,
        agreement=nn,
        cosine_mean=float(cos.mean()),
        cosine_min=float(cos.min()),
        nn_agreement=nn,
    )


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
