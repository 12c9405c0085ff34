"""Side run: c=16 throughput of LocalModel with and without a concurrency gate, against raw threads.

Reproduce: HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python -m bench.inference.gated --reps 5
Same app process as `run.py` (raw session, LocalModel, LocalModel(max_concurrent=profile threads));
per repetition the three modes run in a rotated order; ratios are against raw in the same repetition.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from bench.inference.artifacts import digits_artifacts, minilm_artifacts
from bench.inference.run import Agent, App, _rotated

MODES = ("raw", "local", "local_gated")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "edgeloop-bench-minilm")
    ns = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgeloop-bench-gated-"))
    out = {}
    for art in digits_artifacts()[1:] + minilm_artifacts(ns.cache)[:1]:
        w = work / art.name.replace(" ", "_")
        w.mkdir(parents=True)
        sample = w / "sample.npz"
        np.savez(sample, **art.sample)  # type: ignore[arg-type]
        agent = Agent(art.path, w / "agent")
        app = App(art, sample, agent)
        ratios: dict[str, list[float]] = {"local": [], "local_gated": []}
        try:
            for rep in range(ns.reps):
                rps = {
                    m: app.ask(op="thr", mode=m, duration=ns.duration)["rps"] for m in _rotated(MODES, rep)
                }
                for m, values in ratios.items():
                    values.append(rps[m] / rps["raw"])
                print(art.name, rep, json.dumps(rps), flush=True)
        finally:
            app.close()
            agent.close()
        out[art.name] = ratios
        summary = {m: f"{np.median(v):.0%} ({min(v):.0%} to {max(v):.0%})" for m, v in ratios.items()}
        print(art.name, summary, flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
