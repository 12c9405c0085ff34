"""Numpy fine-tuning of a softmax head (weights `(d, k)`, bias `(k,)`) on on-device features.

Pure computation: no files, sockets or clocks; randomness comes from the task's seed. Supports a
FedProx proximal term (`proximal-mu`). The features are whatever the device stores (for digits,
the 64 raw pixels scaled to [0, 1]); a frozen backbone's embeddings work the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.errors import InvalidInputError


@dataclass(frozen=True)
class TrainParams:
    lr: float = 0.1
    epochs: int = 1
    batch_size: int = 32
    proximal_mu: float = 0.0  # FedProx; SGD on the prox term is stable only while lr * mu < 2
    seed: int = 0

    def __post_init__(self) -> None:
        """A task's config comes from the server: refuse values no training run can use.

        Raises:
            InvalidInputError: lr not finite and > 0, epochs outside 1..1000, batch size < 1, mu < 0.
        """
        if not (np.isfinite(self.lr) and self.lr > 0) or not 1 <= self.epochs <= 1000:
            raise InvalidInputError(f"bad training config: lr={self.lr} epochs={self.epochs}")
        if self.batch_size < 1 or not (np.isfinite(self.proximal_mu) and self.proximal_mu >= 0):
            raise InvalidInputError(
                f"bad training config: batch-size={self.batch_size} proximal-mu={self.proximal_mu}"
            )


def _check(weights: list[np.ndarray], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(weights) != 2 or weights[0].ndim != 2 or weights[1].ndim != 1:
        raise InvalidInputError("softmax head expects [W (d, k), b (k,)]")
    w, b = weights
    if w.shape[1] != b.shape[0] or x.ndim != 2 or x.shape[1] != w.shape[0]:
        raise InvalidInputError(f"features {x.shape} do not fit head {w.shape}")
    return w, b


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def train(
    weights: list[np.ndarray], x: np.ndarray, y: np.ndarray, params: TrainParams
) -> tuple[list[np.ndarray], float]:
    """Minibatch SGD on cross-entropy; returns the new [W, b] (same dtypes) and the last epoch loss.

    Raises:
        InvalidInputError: the arrays do not form a softmax head for these features.
    """
    w0, b0 = _check(weights, x)
    w, b = w0.astype(np.float64), b0.astype(np.float64)
    rng = np.random.default_rng(params.seed)
    k = w.shape[1]
    onehot = np.eye(k)[np.clip(y, 0, k - 1)]
    loss = 0.0
    for _ in range(max(1, params.epochs)):
        order = rng.permutation(len(x))
        total = 0.0
        for start in range(0, len(x), params.batch_size):
            idx = order[start : start + params.batch_size]
            p = softmax(x[idx] @ w + b)
            total += float(-np.log(p[np.arange(len(idx)), y[idx]] + 1e-12).sum())
            grad = (p - onehot[idx]) / len(idx)
            gw = x[idx].T @ grad + params.proximal_mu * (w - w0)
            gb = grad.sum(axis=0) + params.proximal_mu * (b - b0)
            w -= params.lr * gw
            b -= params.lr * gb
        loss = total / max(1, len(x))
    return [w.astype(w0.dtype), b.astype(b0.dtype)], loss


def evaluate(weights: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Returns (mean cross-entropy, accuracy) of the head on (x, y)."""
    w, b = _check(weights, x)
    p = softmax(x @ w.astype(np.float64) + b)
    loss = float(-np.log(p[np.arange(len(x)), y] + 1e-12).mean())
    return loss, float((p.argmax(axis=1) == y).mean())
