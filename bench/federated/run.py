"""Federated benchmark: accuracy under non-IID + attacks, FleetGrid round latency, SecAgg+ cost.

Reproduce (2-core box, ~1 h for everything; see BENCHMARKS.md "Federated"):
    .venv/bin/python -m bench.federated.run --part all --out bench/federated/results.json
Parts: `accuracy` (digits, Dirichlet a=0.3, 20 and 50 clients, 3 seeds, 4 attacks + 4 hidden ones,
8 aggregators incl. the product's robust-* and an honest-only oracle, centralized reference),
`latency` (10 and 50 real agent processes on loopback through FleetGrid), `secagg` (N=100, 1M
parameters, 10% dropouts: ours and Flower's SecAgg+, each with its plain FedAvg, one harness),
`latency+flower` (latency, then the same rounds on Flower's SuperLink + SuperNodes as the anchor).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

AGGREGATORS = (
    "fedavg",
    "fedavg+nb",
    "multikrum",
    "multikrum+nb",
    "trimmed+nb",
    "robust-fedavg",
    "robust-multikrum",
    "oracle",
)


def part_accuracy(
    seeds: int,
    rounds: int,
    attacks: list[str] | None = None,
    aggs: list[str] | None = None,
    sizes: tuple[int, ...] = (20, 50),
) -> dict[str, Any]:
    from bench.federated.accuracy import ATTACKS, HIDDEN, centralized, federated

    logging.getLogger("flwr").setLevel(logging.WARNING)
    central = [centralized(s) for s in range(seeds)]
    out: dict[str, Any] = {"centralized": central, "rows": []}
    for clients in sizes:
        for agg in aggs or AGGREGATORS:
            for attack in attacks or ATTACKS + HIDDEN:
                t0 = time.perf_counter()
                accs = [
                    federated(clients=clients, seed=s, agg=agg, attack=attack, rounds=rounds)
                    for s in range(seeds)
                ]
                row = {
                    "clients": clients,
                    "agg": agg,
                    "attack": attack,
                    "acc": accs,
                    "secs": time.perf_counter() - t0,
                }
                print(json.dumps(row), flush=True)
                out["rows"].append(row)
    return out


def part_latency(sizes: list[int], rounds: int) -> dict[str, Any]:
    from bench.federated.latency import measure

    return {str(n): measure(n, rounds) for n in sizes}


def part_flower(sizes: list[int], rounds: int) -> dict[str, Any]:
    from bench.federated.flower_anchor import measure

    out = {}
    for n in sizes:
        out[str(n)] = measure(n, rounds)
        print(json.dumps(out[str(n)], default=float), flush=True)
    return out


def part_secagg(n: int, params: int, reps: int, flower: bool = True) -> dict[str, Any]:
    """Ours (plain, SecAgg+, and SecAgg+ with its masks expanded on one thread) and Flower's (plain,
    SecAgg+), repetitions interleaved so that any background load hits all modes alike; medians
    over repetitions."""
    import numpy as np

    from bench.federated import flower_secagg, secagg_cost

    logging.getLogger("flwr").setLevel(logging.WARNING)  # its per-node DEBUG lines cost time too
    modes = {
        "plain": lambda s: secagg_cost._one(n, params, 0.1, False, s),
        "secagg": lambda s: secagg_cost._one(n, params, 0.1, True, s),
        "secagg_1thread": lambda s: secagg_cost._one(n, params, 0.1, True, s, mask_threads=1),
    }
    if flower:
        modes["flower_plain"] = lambda s: flower_secagg._one(n, params, 0.1, False, s)
        modes["flower_secaggplus"] = lambda s: flower_secagg._one(n, params, 0.1, True, s)
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    for seed in range(reps):
        for mode, fn in modes.items():
            runs[mode].append(fn(seed))
            print(mode, seed, json.dumps(runs[mode][-1]), flush=True)
    out: dict[str, Any] = {"n": n, "params": params, "drop": 0.1, "reps": reps, "runs": runs}
    for mode, rs in runs.items():
        out[mode] = {k: float(np.median([r[k] for r in rs])) for k in rs[0]}
        out[mode]["spread"] = {k: [float(min(r[k] for r in rs)), float(max(r[k] for r in rs))] for k in rs[0]}
    # goals of issue 19, per repetition (the modes of a repetition ran back to back) and overall
    pairs = {"plain_x_flower_plain": ("plain", "flower_plain"), "secagg_x_plain": ("secagg", "plain"),
             "flower_secaggplus_x_secagg": ("flower_secaggplus", "secagg"),
             "secagg_1thread_x_plain": ("secagg_1thread", "plain")}  # fmt: skip
    out["ratios"] = {}
    for name, (a, b) in pairs.items():
        if a not in runs or b not in runs:
            continue
        for key in ("server_s", "server_cpu_s"):
            per_rep = [ra[key] / rb[key] for ra, rb in zip(runs[a], runs[b], strict=True)]
            out["ratios"][f"{name}/{key}"] = {
                "of_medians": out[a][key] / out[b][key],
                "per_rep_median": float(np.median(per_rep)),
                "per_rep": per_rep,
            }
    out["server_x_plain"] = out["secagg"]["server_s"] / out["plain"]["server_s"]
    out["upload_x_plain"] = out["secagg"]["upload_mb_per_device"] / out["plain"]["upload_mb_per_device"]
    if flower:
        fl = out["flower_secaggplus"]
        out["flower_server_x_plain"] = fl["server_s"] / out["flower_plain"]["server_s"]
        out["flower_upload_x_plain"] = (
            fl["upload_mb_per_device"] / out["flower_plain"]["upload_mb_per_device"]
        )
        out["flower_server_x_ours"] = fl["server_s"] / out["secagg"]["server_s"]
        out["flower_client_x_ours"] = fl["client_s_per_device"] / out["secagg"]["client_s_per_device"]
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument(
        "--part", default="all", choices=["all", "accuracy", "latency", "secagg", "latency+flower"]
    )
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--attacks", default="", help="comma list; default: all (none, sign_flip, ...)")
    p.add_argument("--aggs", default="", help="comma list; default: all aggregators")
    p.add_argument("--clients", default="20,50")
    p.add_argument("--latency-sizes", default="10,50")
    p.add_argument("--flower-sizes", default="", help="default: the latency sizes")
    p.add_argument("--secagg-n", type=int, default=100)
    p.add_argument("--secagg-params", type=int, default=1_000_000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--no-flower-secagg", action="store_true", help="skip Flower's SecAgg+ anchor")
    p.add_argument("--flower-rounds", type=int, default=4)
    p.add_argument("--out", type=Path, default=Path("bench/federated/results.json"))
    ns = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results: dict[str, Any] = json.loads(ns.out.read_text()) if ns.out.exists() else {}
    if ns.part in {"all", "accuracy"}:
        chosen = ns.attacks.split(",") if ns.attacks else None
        aggs = ns.aggs.split(",") if ns.aggs else None
        sizes = tuple(int(c) for c in ns.clients.split(","))
        new = part_accuracy(ns.seeds, ns.rounds, chosen, aggs, sizes)
        if (chosen or aggs or sizes != (20, 50)) and "accuracy" in results:  # replace these rows only
            new["rows"] = [
                r
                for r in results["accuracy"]["rows"]
                if not (
                    (chosen is None or r["attack"] in chosen)
                    and (aggs is None or r["agg"] in aggs)
                    and r["clients"] in sizes
                )
            ] + new["rows"]
        results["accuracy"] = new
    if ns.part in {"all", "secagg"}:
        results["secagg"] = part_secagg(ns.secagg_n, ns.secagg_params, ns.reps, not ns.no_flower_secagg)
    sizes = [int(s) for s in ns.latency_sizes.split(",")]
    if ns.part in {"all", "latency", "latency+flower"}:
        results["latency"] = part_latency(sizes, ns.reps + 2)
        print(json.dumps(results["latency"]), flush=True)
    if ns.part in {"all", "latency+flower"}:
        flower_sizes = [int(s) for s in ns.flower_sizes.split(",")] if ns.flower_sizes else sizes
        results["flower_anchor"] = part_flower(flower_sizes, ns.flower_rounds)
    ns.out.write_text(json.dumps(results, indent=1, default=float))
    print(json.dumps({k: v for k, v in results.items() if k != "accuracy"}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
