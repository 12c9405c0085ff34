"""Per-device trust from agreement with a reference direction, accumulated across rounds and runs.

The reference is the server's own update on its root set when it has one (FLTrust, Cao, Fang,
Liu, Gong, NDSS 2021: trust = cosine with the server update), else the coordinate-wise median
update. Unlike FLTrust, one round's cosine does not decide: a device's reputation is the running
sum of its cosines (keyed by device, kept by the caller across rounds and runs), and at most
`max_drop` devices whose reputation is negative are excluded, the most negative first. A device
holding most of a rare class agrees with a reference computed on data that has that class, so it
is not the one silenced; sign-flip, inner-product and label-flip attackers disagree round after
round. Pure numpy.
"""

from __future__ import annotations

from collections.abc import Hashable, MutableMapping, Sequence

import numpy as np


def cosines(updates: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Cosine of each row with `reference` (0 for a zero row or reference)."""
    norms = np.linalg.norm(updates, axis=1) * float(np.linalg.norm(reference))
    dots = updates @ reference
    out: np.ndarray = np.divide(dots, norms, out=np.zeros(len(updates)), where=norms > 0)
    return out


def median_reference(updates: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.median(updates, axis=0)
    return out


class Reputation:
    """Running sums of cosines per device; `book` can be shared across runs of the same model."""

    def __init__(self, book: MutableMapping[Hashable, float] | None = None, decay: float = 1.0) -> None:
        self.book: MutableMapping[Hashable, float] = {} if book is None else book
        self.decay = decay

    def observe(self, devices: Sequence[Hashable], cos: np.ndarray) -> np.ndarray:
        """Add this round's cosines; returns the devices' reputations."""
        out = np.empty(len(devices))
        for i, dev in enumerate(devices):
            self.book[dev] = self.decay * self.book.get(dev, 0.0) + float(cos[i])
            out[i] = self.book[dev]
        return out

    @staticmethod
    def excluded(reputation: np.ndarray, max_drop: int) -> np.ndarray:
        """Mask of at most `max_drop` rows with negative reputation, the most negative first."""
        mask = np.zeros(len(reputation), dtype=bool)
        if max_drop <= 0 or len(reputation) < 3:
            return mask
        for i in np.argsort(reputation)[:max_drop]:
            if reputation[i] < 0:
                mask[i] = True
        return mask
