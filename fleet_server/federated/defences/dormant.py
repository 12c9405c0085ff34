"""Coordinate-wise median on the coordinates clean data never exercises (backdoor hiding places).

A trigger lives on inputs the clean task does not use (Fine-Pruning, Liu, Dolan-Gavitt, Garg,
RAID 2018: prune what is dormant on clean data). Honest updates are ~0 there, so the mean of the
round is what an attacker minority puts in, and it accumulates round after round because nothing
honest pulls it back. On those coordinates only, the aggregate takes the coordinate-wise median of
the updates (robust up to half the devices); everywhere else the rule's weighted mean stays, so a
device holding most of a rare class keeps its influence on the features that class uses.
The mask comes from the server's root set (`head.HeadOracle.dormant`). Pure numpy.
"""

from __future__ import annotations

import numpy as np


def median_on(
    mask: np.ndarray, aggregate: np.ndarray, updates: np.ndarray, root_grad: np.ndarray | None = None
) -> tuple[np.ndarray, int]:
    """`aggregate` with the masked coordinates replaced by the rows' median; returns it and the count.

    `root_grad` (the root-set loss gradient at the current model): a masked coordinate keeps the
    mean where moving it from the median to the mean lowers the root loss to first order, i.e.
    where clean data on the server backs what the mean adds; where the root set is silent
    (gradient 0, a feature no root image activates) or against it, the median stays."""
    if not mask.any() or len(updates) == 0:
        return aggregate, 0
    out = aggregate.copy()
    med = np.median(updates[:, mask], axis=0)
    if root_grad is not None:
        backed = root_grad[mask] * (aggregate[mask] - med) < 0
        med = np.where(backed, aggregate[mask], med)
        out[mask] = med
        return out, int(mask.sum() - backed.sum())
    out[mask] = med
    return out, int(mask.sum())
