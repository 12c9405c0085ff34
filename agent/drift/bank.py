"""Streaming window bank: block sums in a ring, multi-window two-sample z per block (sans-IO).

Owns the only per-stream state that grows with time-scale: the last `max(windows)` block sums of
every channel, never raw rows, kept as float32 (a block sum of 25 z-scale values needs no more; the
window sums are formed in float64), so 64 features cost 16.5 kB. `push()` takes the sums of newly
completed blocks and returns, per block, every (channel, window) whose |z| crossed its calibrated
threshold. Shares the statistic with calibration (stats.window_z), so what was calibrated is what
runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.drift.calibrate import BankConfig
from agent.drift.sketch import FloatArray
from agent.drift.stats import ChannelModel, window_z


@dataclass(frozen=True)
class Crossing:
    """One channel over its threshold at the end of one block."""

    channel: str
    kind: str
    statistic: float
    threshold: float
    window_rows: int


class WindowBank:
    """Ring of block sums for one channel model with thresholds per "kind@window" group."""

    def __init__(self, channels: ChannelModel, bank: BankConfig, thresholds: dict[str, float]) -> None:
        self.channels = channels
        self.bank = bank
        width = len(channels.names)
        self._ring = np.zeros((bank.warmup_blocks, width), dtype=np.float32)
        self._blocks = 0
        kinds = channels.kind_index()
        self._limit: dict[int, FloatArray] = {}
        self._offset: dict[int, FloatArray] = {}
        self._scaled: dict[int, FloatArray] = {}
        for w in bank.windows:
            limit = np.full(width, np.inf)
            for kind, idx in kinds.items():
                limit[idx] = thresholds.get(f"{kind}@{w}", np.inf)
            rows = w * bank.block
            se = channels.std * np.sqrt(1.0 / rows + 1.0 / channels.n_ref)
            # |sum/rows - mean| / se > limit  <=>  |sum - rows*mean| > limit*se*rows (dead channel: never)
            self._limit[w] = limit
            self._offset[w] = rows * channels.mean
            self._scaled[w] = np.where(se > 0, limit * se * rows, np.inf)

    @property
    def blocks(self) -> int:
        return self._blocks

    @property
    def nbytes(self) -> int:
        return int(self._ring.nbytes)

    def push(self, block_sums: FloatArray) -> list[list[Crossing]]:
        """Add completed blocks (nb, channels); return the crossings at the end of each block."""
        nb, hist = block_sums.shape[0], self._ring.shape[0]
        ext = np.concatenate([self._ring, block_sums])
        cs = np.concatenate([np.zeros((1, ext.shape[1])), np.cumsum(ext, axis=0)])
        out: list[list[Crossing]] = [[] for _ in range(nb)]
        seen = self._blocks + np.arange(1, nb + 1)
        for w in self.bank.windows:
            sums = cs[hist + 1 : hist + nb + 1] - cs[hist + 1 - w : hist + nb + 1 - w]
            hit = np.abs(sums - self._offset[w]) > self._scaled[w]
            if not hit.any():
                continue
            hit &= (seen >= w)[:, None]
            z = np.abs(window_z(sums, w * self.bank.block, self.channels))
            for b, c in zip(*np.nonzero(hit), strict=True):
                out[b].append(
                    Crossing(
                        self.channels.names[c],
                        self.channels.kinds[c],
                        float(z[b, c]),
                        float(self._limit[w][c]),
                        w * self.bank.block,
                    )
                )
        self._ring = ext[-hist:].astype(np.float32)
        self._blocks += nb
        return out
