"""Server-side mirror of the device's DP accountant, to put (epsilon, delta) on round records.

Same mechanism and accounting as `agent/federated/privacy.py` (duplicated on purpose: agent and
server share only protos): Gaussian noise of std sigma*C on an update clipped to C, unit of
privacy = a device's whole local dataset (sensitivity 2C), RDP composed over the rounds a device
took part in, converted with eps = min_a RDP(a) + log(1/delta)/(a-1). The round record carries
the worst case over devices: every round of this run so far.
"""

from __future__ import annotations

import math

ORDERS = (1.25, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0, 128.0, 256.0)


def epsilon_after(rounds: int, noise_multiplier: float, delta: float) -> float:
    """Epsilon of `rounds` noised releases at `noise_multiplier` (0 rounds or no noise: inf/0)."""
    if rounds <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    return min(rounds * 2.0 * a / noise_multiplier**2 + math.log(1.0 / delta) / (a - 1.0) for a in ORDERS)
