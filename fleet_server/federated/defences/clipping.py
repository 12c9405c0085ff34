"""Norm clipping of updates: adaptive (FLAME's median norm) and centered clipping.

`clip_to_median` scales every update to at most `factor` x the round's median update norm
(FLAME, Nguyen et al., USENIX Security 2022: the bound adapts to the honest majority, so a x10
boosted update weighs no more than a typical one). `centered_clip` is Karimireddy, He, Jaggi,
ICML 2021: starting from the previous aggregate step (server momentum), each update's distance to
the centre is clipped to `tau` and the clipped differences are averaged, a few iterations; an
attacker moves the aggregate by at most `tau` x its share. Pure numpy.
"""

from __future__ import annotations

import numpy as np


def clip_to_median(updates: np.ndarray, factor: float = 1.0) -> tuple[np.ndarray, float]:
    """Returns the clipped updates and the bound used (0: nothing to clip)."""
    if len(updates) == 0:
        return updates, 0.0
    norms = np.linalg.norm(updates, axis=1)
    bound = factor * float(np.median(norms))
    if bound <= 0:
        return updates, 0.0
    scale = np.minimum(1.0, bound / np.maximum(norms, 1e-12))
    return updates * scale[:, None], bound


def centered_clip(
    updates: np.ndarray, weights: np.ndarray, center: np.ndarray, tau: float, iters: int = 3
) -> np.ndarray:
    """The centered-clipping aggregate of the rows (weights normalised to sum to 1)."""
    w = weights / max(float(weights.sum()), 1e-12)
    v = center.copy()
    for _ in range(iters):
        diff = updates - v
        norms = np.linalg.norm(diff, axis=1)
        scale = np.minimum(1.0, tau / np.maximum(norms, 1e-12))
        v = v + (w * scale) @ diff
    return v
