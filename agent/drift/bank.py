"""Streaming window bank: block sums in a ring, multi-window two-sample z per block (sans-IO).

Owns the only per-stream state that grows with time-scale: per window stride a ring of at most 8
stride sums of every channel, and one running sum per window, never raw rows. Rings are float32
(a sum of 25-100 z-scale values needs no more; window sums are float64), so 64 features cost
about 10 kB. `push()` takes the sums of newly completed blocks and returns, per block, every
(channel, window) whose |z| crossed its calibrated threshold. Shares the statistic and the test
schedule with calibration (stats.window_z, BankConfig.stride), so what was calibrated is what runs.
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
    """Rings of block sums for one channel model with thresholds per "kind@window" group.

    Windows with the same stride share one ring of (up to 8) stride-block sums; a partial sum
    collects the blocks of the stride under way. A window is tested when its stride completes.
    """

    def __init__(self, channels: ChannelModel, bank: BankConfig, thresholds: dict[str, float]) -> None:
        self.channels = channels
        self.bank = bank
        width = len(channels.names)
        self._blocks = 0
        strides = sorted({bank.stride(w) for w in bank.windows})
        self._rings = {
            st: np.zeros((max(w // st for w in bank.windows if bank.stride(w) == st), width), np.float32)
            for st in strides
        }
        self._partial = {st: np.zeros(width, np.float32) for st in strides if st > 1}
        self._sums = {w: np.zeros(width) for w in bank.windows}
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
        arrays: list[np.ndarray] = [*self._rings.values(), *self._partial.values(), *self._sums.values()]
        return int(sum(a.nbytes for a in arrays))

    def push(self, block_sums: FloatArray) -> list[list[Crossing]]:
        """Add completed blocks (nb, channels); return the crossings at the end of each block.

        Window sums are kept running: each completed stride adds its (float32-rounded) sum and
        drops the one leaving the window, so the float64 running sums stay exact sums of the ring.
        """
        out: list[list[Crossing]] = []
        for row in np.asarray(block_sums, dtype=np.float64):
            self._blocks += 1
            crossings: list[Crossing] = []
            for st, ring in self._rings.items():
                if st > 1:
                    self._partial[st] += row
                    if self._blocks % st:
                        continue
                    unit = self._partial[st].astype(np.float32)
                    self._partial[st][:] = 0.0
                else:
                    unit = row.astype(np.float32)
                done = self._blocks // st  # units completed, this one included
                pos = (done - 1) % ring.shape[0]
                for w in self.bank.windows:
                    if self.bank.stride(w) != st:
                        continue
                    crossings += self._advance(w, unit, ring, done, pos)
                ring[pos] = unit
            out.append(crossings)
        return out

    def _advance(self, w: int, unit: np.ndarray, ring: np.ndarray, done: int, pos: int) -> list[Crossing]:
        units = w // self.bank.stride(w)
        sums = self._sums[w]
        sums += unit
        if done > units:
            sums -= ring[(pos - units) % ring.shape[0]]
        if done < units:
            return []
        hit = np.abs(sums - self._offset[w]) > self._scaled[w]
        return self._crossings(np.flatnonzero(hit), sums, w) if hit.any() else []

    def _crossings(self, channels: np.ndarray, sums: FloatArray, w: int) -> list[Crossing]:
        z = np.abs(window_z(sums, w * self.bank.block, self.channels))
        return [
            Crossing(
                self.channels.names[c],
                self.channels.kinds[c],
                float(z[c]),
                float(self._limit[w][c]),
                w * self.bank.block,
            )
            for c in channels
        ]
