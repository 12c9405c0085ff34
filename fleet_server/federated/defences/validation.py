"""Accept a round only if its aggregate is not worse on the server's held data.

The server scores the candidate model on its root set and compares it with the current model:
a round whose loss rises by more than `margin` (relative) and `abs_margin` (absolute) is rejected
and the model stays where it was. This still works under secure aggregation (it needs only the
aggregate), and it catches attacks that slip past the per-update filters by degrading accuracy;
it cannot see a backdoor (the root set has no trigger). Pure function of two losses.
"""

from __future__ import annotations


def accept(current_loss: float, candidate_loss: float, margin: float = 0.1, abs_margin: float = 0.02) -> bool:
    return candidate_loss <= current_loss * (1.0 + margin) + abs_margin
