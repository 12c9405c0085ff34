"""Framed v2 before/after: added p50 over raw `session.run` and c=16 throughput, two code trees interleaved.

Reproduce (repo root; the old code checked out beside it, never by stashing):

    git worktree add /tmp/before <old commit>
    nice -n 10 .venv/bin/python -m bench.inference.framed_ab --before /tmp/before --reps 5

For each digits model (ONNX fp32 and int8 QDQ, batch 1) and each tree (`--before` and this
checkout), one agent process and one app process run from that tree (`agent_proc.py`,
`app_proc.py`: its server *and* its client). Every repetition measures, for both trees in an order
rotated per repetition: raw `session.run` p50 and framed p50 in the app's process (added = framed
- raw of the same tree and repetition; `--n` calls each), then 16 framed clients (4 processes x 4
threads, the tree's own client) for `--duration` s against the tree's agent, as a ratio to 16 raw
threads in the same app process in the same repetition. Tables give median (min to max) over
repetitions and the after/before ratio of the medians.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.inference.artifacts import Artifact, digits_artifacts
from bench.inference.run import Agent, App

_THROUGHPUT = """
import pickle, sys
from pathlib import Path
from bench.inference.run import _api_throughput
sample = pickle.loads(sys.stdin.buffer.read())
print(_api_throughput(Path(sys.argv[1]), sample, float(sys.argv[2]), framed=True))
"""


def _framed_throughput(tree: Path, agent: Agent, art: Artifact, duration: float) -> float:
    """16 framed clients from `tree` (its client code) against `agent`; requests per second."""
    import pickle

    out = subprocess.run(
        [sys.executable, "-c", _THROUGHPUT, str(agent.socket), str(duration)],
        input=pickle.dumps(art.sample),
        capture_output=True,
        cwd=tree,
        check=True,
    )
    return float(out.stdout.decode().split()[-1])


def bench_model(
    art: Artifact,
    trees: dict[str, Path],
    work: Path,
    *,
    n: int,
    duration: float,
    reps: int,
    after_args: tuple[str, ...] = (),
) -> dict[str, dict[str, list[float]]]:
    sample = work / "sample.npz"
    work.mkdir(parents=True, exist_ok=True)
    np.savez(sample, **art.sample)  # type: ignore[arg-type]
    agents = {
        name: Agent(art.path, work / name, *(after_args if name == "after" else ()), cwd=tree)
        for name, tree in trees.items()
    }
    apps = {name: App(art, sample, agents[name], cwd=tree) for name, tree in trees.items()}
    runs: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
    try:
        for rep in range(reps):
            order = list(trees)[rep % 2 :] + list(trees)[: rep % 2]
            for name in order:
                modes = ["raw", "framed"] if rep % 2 == 0 else ["framed", "raw"]
                lat = {mode: apps[name].ask(op="lat", mode=mode, n=n)["p50_us"] for mode in modes}
                raw_rps = apps[name].ask(op="thr", mode="raw", duration=duration)["rps"]
                rps = _framed_throughput(trees[name], agents[name], art, duration)
                r = runs[name]
                r.setdefault("raw_p50_us", []).append(lat["raw"])
                r.setdefault("framed_p50_us", []).append(lat["framed"])
                r.setdefault("added_p50_us", []).append(lat["framed"] - lat["raw"])
                r.setdefault("framed_c16_rps", []).append(rps)
                r.setdefault("c16_ratio", []).append(rps / raw_rps)
            summary = {t: {k: round(v[-1], 2) for k, v in runs[t].items()} for t in trees}
            print(f"  {art.name} rep {rep + 1}/{reps}: {json.dumps(summary)}", flush=True)
    finally:
        for app in apps.values():
            app.close()
        for agent in agents.values():
            agent.close()
    return runs


def _cell(values: list[float], fmt: str = "{:.0f}") -> str:
    return f"{fmt.format(float(np.median(values)))} ({fmt.format(min(values))} to {fmt.format(max(values))})"


def _table(results: dict[str, dict[str, dict[str, list[float]]]]) -> str:
    rows = [
        "| model | tree | raw p50 µs | framed v2 added p50 µs | framed v2 c=16 / raw c=16 |",
        "|---|---|---|---|---|",
    ]
    for model, runs in results.items():
        for tree, r in runs.items():
            ratio = _cell([100 * v for v in r["c16_ratio"]], "{:.0f}%")
            rows.append(
                f"| {model} | {tree} | {_cell(r['raw_p50_us'])} | {_cell(r['added_p50_us'])} | {ratio} |"
            )
        before, after = runs["before"], runs["after"]
        added = float(np.median(after["added_p50_us"]) / np.median(before["added_p50_us"]))
        thr = float(np.median(after["c16_ratio"]) / np.median(before["c16_ratio"]))
        rows.append(f"| {model} | after / before | | {added:.2f}x | {thr:.2f}x |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", type=Path, required=True, help="checkout of the old code")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--n", type=int, default=2000, help="calls per latency measurement")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per throughput window")
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--after-agent-arg",
        action="append",
        default=[],
        help="extra agent_proc argument for the 'after' agent only (side experiments, e.g. "
        "--before . --after-agent-arg=--intra-op-threads=1)",
    )
    ns = parser.parse_args()
    trees = {"before": ns.before.resolve(), "after": Path.cwd()}
    work = Path(tempfile.mkdtemp(prefix="edgeloop-framed-ab-"))
    results: dict[str, Any] = {}
    for art in digits_artifacts():
        results[art.name] = bench_model(
            art,
            trees,
            work / art.name.replace(" ", "_"),
            n=ns.n,
            duration=ns.duration,
            reps=ns.reps,
            after_args=tuple(ns.after_agent_arg),
        )
    print(_table(results))
    if ns.out:
        ns.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
