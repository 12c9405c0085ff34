"""What an idle gap between calls costs `session.run` on the digits CNN, with 2 and 1 intra-op threads.

Reproduce (repo root, ~1 minute):

    nice -n 10 .venv/bin/python -m bench.inference.ort_gap --reps 5

A served request reaches the model after an idle gap (the agent waited for the request), while the
"raw" baseline of bench/inference/run.py calls `session.run` back to back. With 2 intra-op threads
onnxruntime (no spin-waiting, the agent's session options) must wake its pool thread after any gap;
this bench shows how much of the framed socket's "added p50" is that wake-up and not the socket.
Per repetition and thread count (order rotated per repetition), `--n` calls each of: back to back;
after an 80 µs busy gap (the caller stays on its core, the pool thread sleeps); after
`time.sleep(80 µs)` (both sleep). Cells: median (min to max) of the per-repetition p50.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from agent.inference.onnx_backend import OnnxRuntime
from bench.inference.artifacts import digits_artifacts

GAP_S = 80e-6


def _busy(gap: float) -> None:
    until = time.perf_counter() + gap
    while time.perf_counter() < until:
        pass


def _p50(run: Callable[[], object], before: Callable[[], None] | None, n: int) -> float:
    lat = []
    for _ in range(n):
        if before is not None:
            before()
        t = time.perf_counter()
        run()
        lat.append(time.perf_counter() - t)
    return float(np.percentile(lat, 50) * 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--n", type=int, default=2000)
    ns = parser.parse_args()
    results: dict[str, list[float]] = {}
    for art in digits_artifacts():
        sessions = {t: OnnxRuntime(art.path, threads=t, auto_threads=False)._session for t in (2, 1)}
        for rep in range(ns.reps):
            order = [2, 1] if rep % 2 == 0 else [1, 2]
            for threads in order:
                session = sessions[threads]

                def run(session: Any = session, sample: dict[str, Any] = art.sample) -> object:
                    return session.run(None, sample)

                _p50(run, None, 200)
                cases = {
                    "back to back": None,
                    "80 us busy gap": lambda: _busy(GAP_S),
                    "80 us sleep gap": lambda: time.sleep(GAP_S),
                }
                for case, before in cases.items():
                    results.setdefault(f"{art.name} | {threads} | {case}", []).append(_p50(run, before, ns.n))
    print("| model | intra-op threads | call pattern | session.run p50 µs |")
    print("|---|---|---|---|")
    for key, values in results.items():
        print(f"| {key} | {np.median(values):.1f} ({min(values):.1f} to {max(values):.1f}) |")


if __name__ == "__main__":
    main()
