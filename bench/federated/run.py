"""Federated benchmark: accuracy under non-IID + attacks, FleetGrid round latency, SecAgg+ cost.

Reproduce (2-core box, ~15 min for everything):
    .venv/bin/python -m bench.federated.run --part all --out bench/federated/results.json
Parts: `accuracy` (digits, Dirichlet a=0.3, 20 and 50 clients, 3 seeds, 4 attacks, 5 aggregators,
centralized reference), `latency` (10 and 50 real agent processes on loopback through FleetGrid),
`secagg` (N=100, 1M parameters, 10% dropouts, ours vs plain FedAvg in the same harness),
`latency+flower` (latency, then the same rounds on Flower's SuperLink + SuperNodes as the anchor).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

AGGREGATORS = ("fedavg", "fedavg+nb", "multikrum", "multikrum+nb", "trimmed+nb")


def part_accuracy(seeds: int, rounds: int, attacks: list[str] | None = None) -> dict[str, Any]:
    from bench.federated.accuracy import ATTACKS, centralized, federated

    central = [centralized(s) for s in range(seeds)]
    out: dict[str, Any] = {"centralized": central, "rows": []}
    for clients in (20, 50):
        for agg in AGGREGATORS:
            for attack in attacks or ATTACKS:
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


def part_secagg(n: int, params: int, reps: int) -> dict[str, Any]:
    from bench.federated.secagg_cost import measure

    return measure(n=n, params=params, drop=0.1, reps=reps)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument(
        "--part", default="all", choices=["all", "accuracy", "latency", "secagg", "latency+flower"]
    )
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--attacks", default="", help="comma list; default: all (none, sign_flip, ...)")
    p.add_argument("--latency-sizes", default="10,50")
    p.add_argument("--secagg-n", type=int, default=100)
    p.add_argument("--secagg-params", type=int, default=1_000_000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--flower-rounds", type=int, default=4)
    p.add_argument("--out", type=Path, default=Path("bench/federated/results.json"))
    ns = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results: dict[str, Any] = json.loads(ns.out.read_text()) if ns.out.exists() else {}
    if ns.part in {"all", "accuracy"}:
        chosen = ns.attacks.split(",") if ns.attacks else None
        new = part_accuracy(ns.seeds, ns.rounds, chosen)
        if chosen and "accuracy" in results:  # add/replace these attacks' rows only
            new["rows"] = [r for r in results["accuracy"]["rows"] if r["attack"] not in chosen] + new["rows"]
        results["accuracy"] = new
    if ns.part in {"all", "secagg"}:
        results["secagg"] = part_secagg(ns.secagg_n, ns.secagg_params, ns.reps)
    sizes = [int(s) for s in ns.latency_sizes.split(",")]
    if ns.part in {"all", "latency", "latency+flower"}:
        results["latency"] = part_latency(sizes, ns.reps + 2)
    if ns.part in {"all", "latency+flower"}:
        results["flower_anchor"] = part_flower(sizes, ns.flower_rounds)
    ns.out.write_text(json.dumps(results, indent=1, default=float))
    print(json.dumps({k: v for k, v in results.items() if k != "accuracy"}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
