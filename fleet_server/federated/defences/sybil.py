"""Near-identical updates from different devices count as one device (FoolsGold's premise).

Fung, Yoon, Beschastnikh, "The limitations of federated learning in sybil settings" (RAID 2020):
colluding or sybil devices push the same objective, so their updates are far more alike than
honest devices' under non-IID data, where no two devices hold the same data. Here a group of
updates whose pairwise cosine is at least `threshold` shares one device's weight (each member's
weight is divided by the group size). It catches the omniscient attacks that send one crafted
vector from every attacker (ALIE, inner-product manipulation) without judging any honest device by
how different its data is; an attacker that adds enough noise to decorrelate also weakens its own
push. Pure numpy.
"""

from __future__ import annotations

import numpy as np


def group_sizes(updates: np.ndarray, threshold: float = 0.95) -> np.ndarray:
    """For each row, how many rows (itself included) have cosine >= threshold with it."""
    if len(updates) == 0:
        return np.zeros(0)
    norms = np.maximum(np.linalg.norm(updates, axis=1), 1e-12)
    unit = updates / norms[:, None]
    sizes: np.ndarray = (unit @ unit.T >= threshold).sum(axis=1).astype(np.float64)
    return sizes
