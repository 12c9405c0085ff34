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


def clip_to_median(
    updates: np.ndarray, factor: float = 1.0, steps: np.ndarray | None = None
) -> tuple[np.ndarray, float]:
    """Returns the clipped updates and the bound used (0: nothing to clip).

    `steps`: each device's number of local SGD steps. The bound then applies to the norm per
    step (FedNova's normalised update, Wang et al. NeurIPS 2020: a device with more data takes
    more steps and its update is longer for that reason alone), and device i may reach
    `steps[i]` x that; the bound returned is the one of the median device."""
    if len(updates) == 0:
        return updates, 0.0
    norms = np.linalg.norm(updates, axis=1)
    per = np.ones(len(updates)) if steps is None else np.maximum(steps, 1.0)
    unit = factor * float(np.median(norms / per))
    if unit <= 0:
        return updates, 0.0
    scale = np.minimum(1.0, unit * per / np.maximum(norms, 1e-12))
    return updates * scale[:, None], unit * float(np.median(per))


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
