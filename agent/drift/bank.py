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


class _Stride:
    """The windows tested every `stride` blocks: their ring of stride sums and rows of the bank's sums."""

    def __init__(self, stride: int, units: tuple[int, ...], first: int, width: int) -> None:
        self.stride = stride
        self.first, self.end = first, first + len(units)
        self.ring = np.zeros((max(units), width), np.float32)
        self.partial: np.ndarray | None = np.zeros(width, np.float32) if stride > 1 else None
        size = self.ring.shape[0]
        # per ring position: the slot each window drops when a unit lands there (never written: 0)
        self.leaving = [np.array([(pos - u) % size for u in units]) for pos in range(size)]
        self.units = units


class WindowBank:
    """Rings of block sums for one channel model with thresholds per "kind@window" group.

    Windows with the same stride share one ring of (up to 8) stride-block sums; a partial sum
    collects the blocks of the stride under way. A window is tested when its stride completes.
    The running sums of all windows live in one array, ordered by stride, so the windows due at a
    block are updated and tested with a few numpy calls whatever the number of channels.
    """

    def __init__(self, channels: ChannelModel, bank: BankConfig, thresholds: dict[str, float]) -> None:
        self.channels = channels
        self.bank = bank
        width = len(channels.names)
        self._blocks = 0
        windows = sorted(bank.windows, key=bank.stride)  # stable: windows in config order within a stride
        self._windows = tuple(windows)
        self._strides: list[_Stride] = []
        for st in sorted({bank.stride(w) for w in windows}):
            first = next(i for i, w in enumerate(windows) if bank.stride(w) == st)
            units = tuple(w // st for w in windows if bank.stride(w) == st)
            self._strides.append(_Stride(st, units, first, width))
        self._sums = np.zeros((len(windows), width))
        self._dev = np.zeros((len(windows), width))
        self._hit = np.zeros((len(windows), width), dtype=np.bool_)
        self._limit = np.full((len(windows), width), np.inf)
        kinds = channels.kind_index()
        for i, w in enumerate(windows):
            for kind, idx in kinds.items():
                self._limit[i, idx] = thresholds.get(f"{kind}@{w}", np.inf)
        rows = np.array([w * bank.block for w in windows], dtype=np.float64)[:, None]
        se = channels.std * np.sqrt(1.0 / rows + 1.0 / channels.n_ref)
        # |sum/rows - mean| / se > limit  <=>  |sum - rows*mean| > limit*se*rows (dead channel: never)
        self._offset = rows * channels.mean
        self._scaled = np.where(se > 0, self._limit * se * rows, np.inf)

    @property
    def blocks(self) -> int:
        return self._blocks

    @property
    def nbytes(self) -> int:
        arrays: list[np.ndarray] = [self._sums, *(g.ring for g in self._strides)]
        arrays += [g.partial for g in self._strides if g.partial is not None]
        return int(sum(a.nbytes for a in arrays))

    def push(self, block_sums: FloatArray) -> list[list[Crossing]]:
        """Add completed blocks (nb, channels); return the crossings at the end of each block.

        Window sums are kept running: each completed stride adds its (float32-rounded) sum and
        drops the one leaving the window (a ring slot not yet written holds 0), so the float64
        running sums stay exact sums of the ring.
        """
        rows = np.asarray(block_sums, dtype=np.float64)
        rows32 = rows.astype(np.float32)
        out: list[list[Crossing]] = []
        for r in range(rows.shape[0]):
            self._blocks += 1
            due: list[tuple[int, int]] = []  # rows of the sums whose stride completes at this block
            for g in self._strides:
                if g.partial is None:
                    unit = rows32[r]
                else:
                    g.partial += rows[r]
                    if self._blocks % g.stride:
                        continue
                    unit = g.partial.copy()
                    g.partial[:] = 0.0
                pos = (self._blocks // g.stride - 1) % g.ring.shape[0]
                sums = self._sums[g.first : g.end]
                sums += unit
                sums -= g.ring[g.leaving[pos]]
                g.ring[pos] = unit
                if due and due[-1][1] == g.first:
                    due[-1] = (due[-1][0], g.end)  # adjacent rows: one test
                else:
                    due.append((g.first, g.end))
            crossings: list[Crossing] = []
            for first, end in due:
                crossings += self._test(first, end)
            out.append(crossings)
        return out

    def _test(self, first: int, end: int) -> list[Crossing]:
        """Crossings of the full windows in rows [first, end) of the sums, in window order."""
        dev, hit = self._dev[first:end], self._hit[first:end]
        np.subtract(self._sums[first:end], self._offset[first:end], out=dev)
        np.abs(dev, out=dev)
        np.greater(dev, self._scaled[first:end], out=hit)
        if not hit.any():
            return []
        crossings: list[Crossing] = []
        for i in range(first, end):
            w = self._windows[i]
            st = self.bank.stride(w)
            if self._blocks // st < w // st or not self._hit[i].any():
                continue  # window not full yet, or quiet
            crossings += self._crossings(np.flatnonzero(self._hit[i]), self._sums[i], i)
        return crossings

    def _crossings(self, channels: np.ndarray, sums: FloatArray, i: int) -> list[Crossing]:
        w = self._windows[i]
        z = np.abs(window_z(sums, w * self.bank.block, self.channels))
        return [
            Crossing(
                self.channels.names[c],
                self.channels.kinds[c],
                float(z[c]),
                float(self._limit[i][c]),
                w * self.bank.block,
            )
            for c in channels
        ]
