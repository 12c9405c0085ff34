"""FLAME-style clustering of updates by cosine distance (Nguyen et al., USENIX Security 2022).

FLAME runs HDBSCAN with a minimum cluster size of n/2 + 1 on pairwise cosine distances and keeps
the majority cluster; the server has no scikit-learn, so this keeps what that clustering keeps in
its simplest form: a device whose core distance (cosine distance to its (n/2)-th nearest neighbour)
is within `slack` of the (n/2 + 1)-th smallest core distance belongs to the dense majority, the
rest are outliers. Under strongly non-IID data honest devices are far apart too, so this drops
honest minorities (measured in BENCHMARKS.md); it is an option, not a default. Pure numpy.
"""

from __future__ import annotations

import numpy as np


def majority(updates: np.ndarray, slack: float = 0.1) -> np.ndarray:
    """Mask of the rows in the dense majority."""
    n = len(updates)
    if n < 4:
        return np.ones(n, dtype=bool)
    norms = np.maximum(np.linalg.norm(updates, axis=1), 1e-12)
    unit = updates / norms[:, None]
    dist = 1.0 - unit @ unit.T
    k = n // 2
    core = np.sort(dist, axis=1)[:, k]  # column 0 is the point itself
    threshold = float(np.sort(core)[k]) * (1.0 + slack)
    keep: np.ndarray = core <= threshold
    return keep
