"""Server cost per round of each robust-aggregation defence at 50 clients (issue 18).

One round's 50 replies (digits softmax head, Dirichlet alpha 0.1, 20% ALIE attackers, the
harness's trainer) are built once; each configuration then aggregates a fresh copy of them
(`aggregate_train`, as the runner calls it; building the copies is not timed). Configurations:
Flower's FedAvg, MultiKrum and FedTrimmedAvg; `robust-fedavg` as shipped; and the pipeline with
all stages off plus one stage on, so each stage's cost is its row minus the "stages off" row.
Repetitions are interleaved (every configuration once per repetition) so background load hits
them alike; the time is the process's CPU time (the box is shared: wall time mostly measures the
other work), the table gives the median per round over repetitions and the min-max spread.

    nice -n 10 .venv/bin/python -m bench.federated.robust_cost --reps 5
    nice -n 10 .venv/bin/python -m bench.federated.robust_cost --reps 5 --blas 1,0   # A/B: BLAS threads

BLAS threads are capped at 1 by default, as the fleet server does (`settings.blas_threads`);
`--blas 1,0` runs every repetition under the cap and under the library's default, order rotated.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedTrimmedAvg, MultiKrum, Strategy
from flwr.supercore.task_identity import TaskIdentity
from threadpoolctl import threadpool_info, threadpool_limits

from agent.federated import trainer
from bench.federated.accuracy import BATCH, EPOCHS, LR, _flat, _partition, _unflat, attack_updates, load
from fleet_server.federated.defences.pipeline import DefenceConfig
from fleet_server.federated.rootdata import RootSet
from fleet_server.federated.strategy import StrategySpec, make_strategy

OFF = DefenceConfig(reputation=False, sybil=0.0, clip_factor=0.0, dormant=False, validate=False)
CONFIGS: dict[str, tuple[str, DefenceConfig | None]] = {
    "flower FedAvg": ("fedavg", None),
    "flower MultiKrum": ("multikrum", None),
    "flower FedTrimmedAvg": ("trimmed", None),
    "robust-fedavg (shipped)": ("robust-fedavg", DefenceConfig()),
    "pipeline, stages off": ("robust-fedavg", OFF),
    "+ reputation (server update on root set)": ("robust-fedavg", replace(OFF, reputation=True)),
    "+ sybil grouping": ("robust-fedavg", replace(OFF, sybil=0.95)),
    "+ median-norm clipping": ("robust-fedavg", replace(OFF, clip_factor=2.0)),
    "+ dormant-feature median": ("robust-fedavg", replace(OFF, dormant=True)),
    "+ aggregate validation": ("robust-fedavg", replace(OFF, validate=True)),
    "+ FLAME clustering": ("robust-fedavg", replace(OFF, flame=True)),
    "+ centered clipping": ("robust-fedavg", replace(OFF, cclip=True)),
    "robust-multikrum, bucketing s=2": ("robust-multikrum", OFF),
}


def _round_replies(clients: int, seed: int) -> tuple[ArrayRecord, Callable[[], list[Message]], RootSet]:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 0
    xtr, ytr, _, _ = load()
    parts, _ = _partition(clients, 0.1, seed)
    rng = np.random.default_rng(seed)
    f = clients // 5
    bad = set(rng.choice(clients, f, replace=False).tolist())
    w = [rng.normal(0, 0.1, (64, 10)).astype(np.float32), np.zeros(10, np.float32)]
    base = _flat(w)
    params = trainer.TrainParams(lr=LR, epochs=EPOCHS, batch_size=BATCH, seed=seed)
    deltas = [_flat(trainer.train(w, xtr[p], ytr[p], params)[0]) - base for p in parts]
    honest = np.stack([d for c, d in enumerate(deltas) if c not in bad])
    sent = [
        attack_updates("alie", honest, d, clients, f, rng) if c in bad else d for c, d in enumerate(deltas)
    ]
    g = ArrayRecord({"w": Array(w[0]), "b": Array(w[1])})
    root_idx = np.concatenate([np.flatnonzero(ytr == c)[:10] for c in range(10)])

    def replies() -> list[Message]:
        out = []
        for c, d in enumerate(sent):
            req = Message(RecordDict({"arrays": g}), dst_node_id=c + 2, message_type="train")
            req.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            new = _unflat(base + d, w)
            rec = ArrayRecord({"w": Array(new[0]), "b": Array(new[1])})
            content = RecordDict({"arrays": rec, "metrics": MetricRecord({"num-examples": len(parts[c])})})
            out.append(Message(content, reply_to=req))
        return out

    return g, replies, RootSet(xtr[root_idx], ytr[root_idx])


class _Nodes:
    def __init__(self, n: int) -> None:
        self.n = n

    def get_node_ids(self) -> list[int]:
        return [c + 2 for c in range(self.n)]


def _strategy(agg: str, cfg: DefenceConfig | None, clients: int, root: RootSet) -> Strategy:
    f = clients // 5
    common = {"min_train_nodes": 2, "min_available_nodes": 2}
    if agg == "fedavg":
        return FedAvg(**common)  # type: ignore[arg-type]
    if agg == "multikrum":
        return MultiKrum(num_malicious_nodes=f, num_nodes_to_select=clients - f, **common)  # type: ignore[arg-type]
    if agg == "trimmed":
        return FedTrimmedAvg(beta=0.2, **common)  # type: ignore[arg-type]
    return make_strategy(StrategySpec(agg, min_nodes=clients, malicious=f), root=root, defence=cfg)


def measure(clients: int, reps: int, rounds: int, blas: tuple[int, ...] = (1,)) -> dict[str, Any]:
    """Per-round CPU of each configuration; with several `blas` caps (0 = the library's default
    threads), every repetition runs every configuration under each cap, the cap order rotated."""
    logging.disable(logging.WARNING)
    g, replies, root = _round_replies(clients, 0)
    config = ConfigRecord({"lr": LR, "local-epochs": EPOCHS, "batch-size": BATCH})
    default = max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")
    times: dict[int, dict[str, list[float]]] = {b: {name: [] for name in CONFIGS} for b in blas}
    for rep in range(reps):
        for b in blas[rep % len(blas) :] + blas[: rep % len(blas)]:
            with threadpool_limits(limits=b or default, user_api="blas"):
                for name, (agg, cfg) in CONFIGS.items():
                    strat = _strategy(agg, cfg, clients, root)
                    total = 0.0
                    for rnd in range(1, rounds + 1):
                        batch = replies()
                        list(strat.configure_train(rnd, g, config, _Nodes(clients)))  # type: ignore[arg-type]
                        t0 = time.process_time()
                        strat.aggregate_train(rnd, batch)
                        total += time.process_time() - t0
                    times[b][name].append(total / rounds)
    return {
        "clients": clients,
        "reps": reps,
        "rounds_per_rep": rounds,
        "blas_default_threads": default,
        "per_round_cpu_s": {
            str(b): {k: {"median": float(np.median(v)), "min": min(v), "max": max(v)} for k, v in t.items()}
            for b, t in times.items()
        },
    }


def table(result: dict[str, Any]) -> str:
    caps = list(result["per_round_cpu_s"])
    default = result["blas_default_threads"]
    label = {
        c: f"BLAS {c if c != '0' else default} thread(s){' (server default)' if c == '1' else ''}"
        for c in caps
    }
    head = " | ".join(f"{label[c]}: CPU ms per round, median (min-max) | stage cost (ms)" for c in caps)
    lines = [f"| configuration | {head} |", "|---|" + "---|---|" * len(caps)]
    for name in result["per_round_cpu_s"][caps[0]]:
        cells = []
        for c in caps:
            rows = result["per_round_cpu_s"][c]
            r, base = rows[name], rows["pipeline, stages off"]["median"]
            extra = f"{1000 * (r['median'] - base):+.1f}" if name.startswith("+") else ""
            cells.append(f"{1000 * r['median']:.1f} ({1000 * r['min']:.1f}-{1000 * r['max']:.1f}) | {extra}")
        lines.append(f"| {name} | {' | '.join(cells)} |")
    if len(caps) == 2 and "1" in caps and "0" in caps:
        ship = "robust-fedavg (shipped)"
        one, lib = (result["per_round_cpu_s"][c][ship]["median"] for c in ("1", "0"))
        lines.append(f"\n{ship}: 1 BLAS thread / library default = {one / lib:.2f}x CPU")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=5, help="aggregations per configuration and repetition")
    p.add_argument(
        "--blas", default="1", help="BLAS thread caps, comma-separated (0 = library default); 1,0 = A/B"
    )
    p.add_argument("--json", action="store_true")
    ns = p.parse_args()
    result = measure(ns.clients, ns.reps, ns.rounds, tuple(int(b) for b in ns.blas.split(",")))
    print(json.dumps(result, indent=1) if ns.json else table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
