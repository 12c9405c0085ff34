"""Cost of the drift monitor now vs at an earlier commit, interleaved in one process (issue 17).

Usage: .venv/bin/python bench/drift/cost_vs_commit.py [--commit d136135] [--reps 7] [--json out.json]

The old `agent/drift` package is read from git (`git show <commit>:agent/drift/...`, so run it
inside the repository's checkout) into a temporary directory as the package `agent_old.drift`.
Per repetition and width (the issue-17 "wide" rows of bench/drift/streams.py, d=20 and d=64):
CPU to build and calibrate the reference (1,000 rows) and CPU per 1,000 samples of the monitor fed
25-row and 100-row micro-batches, old then new on the same rows. Reports median [range] and the
per-repetition old/new ratio: on a shared box the ratio is the number that travels.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import agent.drift as new_drift
from bench.drift.streams import _wide_rows

ROWS = 4000


def _old_package(commit: str) -> ModuleType:
    """Import agent/drift at `commit` as agent_old.drift (imports rewritten to the new name)."""
    files = subprocess.run(
        ["git", "ls-tree", "--name-only", commit, "agent/drift/"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    root = Path(tempfile.mkdtemp())
    pkg = root / "agent_old" / "drift"
    pkg.mkdir(parents=True)
    (root / "agent_old" / "__init__.py").write_text("")
    for name in files:
        source = subprocess.run(
            ["git", "show", f"{commit}:{name}"], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout
        (pkg / Path(name).name).write_text(source.replace("agent.drift", "agent_old.drift"))
    sys.path.insert(0, str(root))
    return importlib.import_module("agent_old.drift")


def _one(mod: ModuleType, ref: np.ndarray, x: np.ndarray, rep: int) -> dict[str, float]:
    t = time.process_time()
    profile = mod.build_reference(ref, seed=rep)
    out = {"setup_s": time.process_time() - t}
    for batch in (25, 100):
        monitor = mod.DriftMonitor(profile)
        t = time.process_time()
        for i in range(0, ROWS, batch):
            monitor.observe(x[i : i + batch])
        out[f"ms_{batch}"] = 1e6 * (time.process_time() - t) / ROWS
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--commit", default="d136135")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--json", type=Path)
    ns = parser.parse_args()
    old_drift = _old_package(ns.commit)
    rows: dict[str, list[dict[str, float]]] = {}
    for rep in range(ns.reps):  # interleaved: both widths, old then new, per repetition
        for d in (20, 64):
            rng = np.random.default_rng([20261207, d, rep])
            ref, x = _wide_rows(rng, 1000, d), _wide_rows(rng, ROWS, d)
            rows.setdefault(f"{d}/old", []).append(_one(old_drift, ref, x, rep))
            rows.setdefault(f"{d}/new", []).append(_one(new_drift, ref, x, rep))

    def fmt(v: list[float], digits: int = 1) -> str:
        return f"{statistics.median(v):.{digits}f} [{min(v):.{digits}f}-{max(v):.{digits}f}]"

    print(f"| d | measure | {ns.commit} | now | {ns.commit}/now |")
    print("|---|---|---|---|---|")
    for d in (20, 64):
        old, new = rows[f"{d}/old"], rows[f"{d}/new"]
        for key, label, digits in (
            ("setup_s", "calibration s", 2),
            ("ms_25", "ms/1k, 25-row feed", 1),
            ("ms_100", "ms/1k, 100-row feed", 1),
        ):
            a, b = [r[key] for r in old], [r[key] for r in new]
            ratio = [p / q for p, q in zip(a, b, strict=True)]
            print(f"| {d} | {label} | {fmt(a, digits)} | {fmt(b, digits)} | {fmt(ratio, 2)} |")
    print(f"\n{ns.reps} interleaved repetitions; CPU is time.process_time on a shared box")
    if ns.json:
        ns.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
