"""Bad input the drift monitor cannot use: the error a caller gets and the counters it keeps.

Owns `DriftInputError` (raised for rows that can never be monitored: a mis-wired feeder), the
`BadInput` counters and the non-finite policies. The monitor (monitor.py) decides when to raise
and opens the data-quality episode. Numpy only, sans-IO.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from agent.drift.episodes import Episode

NONFINITE_POLICIES = ("drop", "raise")


class DriftInputError(ValueError):
    """Input the monitor can never use: a mis-wired feeder. The rows were not monitored.

    Attributes:
        reason: what is wrong, in words a caller can act on.
        events: episode events produced by this call (the data-quality episode opening, and any
            drift events of good rows in the same call); report them like `observe`'s result.
    """

    def __init__(self, reason: str, events: list[Episode]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.events = events


@dataclass
class BadInput:
    """Counters of rejected input; rows counted here never reach a statistic."""

    bad_shape: int = 0
    missing: dict[str, int] = field(default_factory=dict)
    nonfinite: dict[str, int] = field(default_factory=dict)
    bad_outputs: int = 0
    bad_labels: int = 0

    @property
    def total(self) -> int:
        return self.bad_shape + sum(self.missing.values()) + sum(self.nonfinite.values()) + self.bad_outputs


def trailing_run(bad: npt.NDArray[np.bool_], previous: npt.NDArray[np.int32]) -> npt.NDArray[np.int64]:
    """Per column: length of the run of `bad` rows ending at the last row, continuing `previous`."""
    n = bad.shape[0]
    ok = ~bad
    last_ok = np.where(ok.any(axis=0), n - 1 - np.argmax(ok[::-1], axis=0), -1)
    return np.asarray(np.where(last_ok >= 0, n - 1 - last_ok, previous + n), dtype=np.int64)
