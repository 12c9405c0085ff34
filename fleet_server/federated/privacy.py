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
    """Epsilon of `rounds` noised releases at `noise_multiplier` (0 rounds: 0; no noise: inf).

    Never raises: a noise multiplier whose square under- or overflows, or a delta outside (0, 1),
    gives inf (no meaningful guarantee) instead of an exception in the run's thread.
    """
    if rounds <= 0:
        return 0.0
    if not (noise_multiplier > 0 and 0 < delta < 1) or not math.isfinite(noise_multiplier):
        return math.inf
    try:
        variance = noise_multiplier * noise_multiplier
        if variance == 0.0:
            return math.inf
        return min(rounds * 2.0 * a / variance + math.log(1.0 / delta) / (a - 1.0) for a in ORDERS)
    except (OverflowError, ZeroDivisionError):
        return math.inf
