"""Cost of the drift monitor at d=20 and d=64 next to river's ADWIN, interleaved repetitions.

Usage: .venv/bin/python bench/drift/cost.py [--reps 7] [--json out.json]

Per repetition and width (the issue-17 "wide" sensor rows, bench/drift/streams.py): CPU to build
and calibrate the reference (1,000 rows), CPU per 1,000 samples of the monitor fed 25-row and
100-row micro-batches (what the daemon feeds by default: 20 captures/s drained every 5 s), and of one
river ADWIN per feature on the same stream, in the same process, one after the other; mutable
state bytes of the monitor. Reports the median and the range over repetitions, and the per-
repetition ratio to ADWIN for both feeds: on a shared box the ratio is the number that travels.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.drift import DriftMonitor, build_reference
from bench.drift.streams import _wide_rows


def _monitor_cpu(monitor: DriftMonitor, x: np.ndarray, batch: int) -> float:
    t = time.process_time()
    for i in range(0, x.shape[0], batch):
        monitor.observe(x[i : i + batch])
    return 1e6 * (time.process_time() - t) / x.shape[0]


def _adwin_cpu(x: np.ndarray) -> float:
    from river import drift

    dets = [drift.ADWIN() for _ in range(x.shape[1])]
    t = time.process_time()
    for row in x.tolist():
        for det, v in zip(dets, row, strict=True):
            det.update(v)
            _ = det.drift_detected
    return 1e6 * (time.process_time() - t) / x.shape[0]


def one_rep(rep: int, d: int) -> dict[str, float]:
    rng = np.random.default_rng([20261207, d, rep])
    ref, x = _wide_rows(rng, 1000, d), _wide_rows(rng, 4000, d)
    t = time.process_time()
    profile = build_reference(ref, seed=rep)
    setup = time.process_time() - t
    monitor = DriftMonitor(profile)
    out = {"setup_s": setup, "ours_25": _monitor_cpu(monitor, x, 25)}
    out["state_bytes"] = float(monitor.state_bytes)
    out["ours_100"] = _monitor_cpu(DriftMonitor(profile), x, 100)
    out["adwin"] = _adwin_cpu(x)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--json", type=Path)
    ns = parser.parse_args()
    rows: dict[int, list[dict[str, float]]] = {20: [], 64: []}
    for rep in range(ns.reps):  # interleaved: both widths and all detectors per repetition
        for d, reps in rows.items():
            reps.append(one_rep(rep, d))
    summary: dict[str, Any] = {}
    print("| d | setup s (calibration) | ours ms/1k, 25-row feed | ours ms/1k, 100-row feed | ADWIN ms/1k "
          "| ours/ADWIN (25-row) | ours/ADWIN (100-row) | mutable state B |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for d, reps in rows.items():
        cells = {}
        for key in ("setup_s", "ours_25", "ours_100", "adwin"):
            v = [r[key] for r in reps]
            cells[key] = (statistics.median(v), min(v), max(v))
        ratio = [r["ours_25"] / r["adwin"] for r in reps]
        ratio100 = [r["ours_100"] / r["adwin"] for r in reps]
        summary[str(d)] = {
            **cells,
            "ratio": statistics.median(ratio),
            "ratio_100": statistics.median(ratio100),
            "state": max(r["state_bytes"] for r in reps),
        }

        def fmt(c: tuple[float, float, float], digits: int = 1) -> str:
            return f"{c[0]:.{digits}f} [{c[1]:.{digits}f}-{c[2]:.{digits}f}]"

        print(
            f"| {d} | {fmt(cells['setup_s'], 2)} | {fmt(cells['ours_25'])} | {fmt(cells['ours_100'])} "
            f"| {fmt(cells['adwin'])} | {statistics.median(ratio):.2f} [{min(ratio):.2f}-{max(ratio):.2f}] "
            f"| {statistics.median(ratio100):.2f} [{min(ratio100):.2f}-{max(ratio100):.2f}] "
            f"| {int(summary[str(d)]['state']):,} |"
        )
    print(f"\n{ns.reps} interleaved repetitions; CPU is time.process_time on a shared box")
    if ns.json:
        ns.json.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
