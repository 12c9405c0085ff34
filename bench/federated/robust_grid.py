"""Issue 18 grid: robust aggregation across heterogeneity, participation and attack, many seeds.

Settings (bench.federated.accuracy.Setting): Dirichlet alpha in {0.3, 0.1}, 20 and 50 clients,
scenarios `full20` (20% attackers, every client replies), `full30` (30% attackers),
`honestdrop20` (20% attackers, 30% of the honest clients fail each round), `randdrop20` (20%
attackers, 30% of all clients fail), each clean run with and without dropouts; aggregators:
Flower's FedAvg, MultiKrum and FedTrimmedAvg as anchors and the product's `robust-fedavg`
(defences.pipeline with the server's root set). Every (setting, aggregator) row runs all seeds
and is appended to the JSON checkpoint as soon as it finishes, so a stopped grid keeps its rows;
`--shard i/k` runs every k-th task (start k processes for k cores); rows already in the
checkpoint are skipped. `--report` prints the tables (mean, worst seed, seeds below the goal).

    nice -n 10 .venv/bin/python -m bench.federated.robust_grid --rounds 25 --seeds 10 \
        --out bench/federated/robust_grid.json --shard 0/2 &
    nice -n 10 .venv/bin/python -m bench.federated.robust_grid ... --shard 1/2 &
    .venv/bin/python -m bench.federated.robust_grid --out bench/federated/robust_grid.json --report
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from fleet_server.federated.defences.pipeline import DefenceConfig

AGGS = ("fedavg", "multikrum", "trimmed", "robust-fedavg")
# columns of the report, in this order when present; `oracle` is FedAvg over the honest clients only
ORDER = ("fedavg", "oracle", "multikrum", "trimmed", "robust-fedavg")
# `robust-fedavg/<variant>[+<variant>...]`: the pipeline with stages changed, applied in order
# (the ablation of issue 18). `prev` is the default before the dormant median became per class
# and gated by the root-set gradient, so `prev+norep` is that default without reputation.
VARIANTS: dict[str, dict[str, Any]] = {
    "prev": {"dormant_per_class": False, "dormant_gate": False},
    "norep": {"reputation": False},
    "nosybil": {"sybil": 0.0},
    "noclip": {"clip_factor": 0.0},
    "nodormant": {"dormant": False},
    "novalidate": {"validate": False},
    "dormclass": {"dormant_per_class": True},
    "nogate": {"dormant_gate": False},
    "clipsteps": {"clip_per_step": True},
}
ALL_ATTACKS = ("sign_flip", "alie", "ipm", "scaled_label_flip", "backdoor", "backdoor_scaled")
SCENARIOS: dict[str, tuple[float, str, tuple[str, ...]]] = {
    # name: (attacker fraction, dropout, attacks)
    "full20": (0.2, "none", ALL_ATTACKS),
    "honestdrop20": (0.2, "honest", ("sign_flip", "alie", "ipm", "backdoor", "backdoor_scaled")),
    "full30": (0.3, "none", ("sign_flip", "alie", "ipm", "backdoor")),
    "randdrop20": (0.2, "random", ("alie", "ipm", "backdoor")),
}


# At 50 clients (2.5x the cost of a 20-client run) the grid keeps the attacks that were worst for
# someone at 20 clients; `--seeds-50` may lower the seed count there (the report says how many ran).
LEAN = {"full20": ("sign_flip", "alie", "ipm", "backdoor", "backdoor_scaled"),
        "honestdrop20": ("alie", "ipm", "backdoor")}  # fmt: skip


def tasks(
    sizes: tuple[int, ...], alphas: tuple[float, ...], aggs: tuple[str, ...] = AGGS
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for clients in sizes:
        for alpha in alphas:
            base = {"clients": clients, "alpha": alpha}
            out += [{**base, "scenario": "clean", "frac": 0.2, "dropout": "none", "attack": "none"}]
            out += [{**base, "scenario": "cleandrop", "frac": 0.2, "dropout": "random", "attack": "none"}]
            for name, (frac, dropout, attacks) in SCENARIOS.items():
                chosen = LEAN.get(name, attacks) if clients >= 50 else attacks
                out += [
                    {**base, "scenario": name, "frac": frac, "dropout": dropout, "attack": a} for a in chosen
                ]
    # the goal's settings first (clean, 20% attackers with and without honest dropouts), then the rest
    # and within them the attacks that were worst for someone first, both alphas alike
    first = {"clean", "full20", "honestdrop20"}
    prio = ["none", "backdoor", "ipm", "alie", "sign_flip", "backdoor_scaled", "scaled_label_flip"]
    out.sort(key=lambda t: (t["scenario"] not in first, t["clients"], prio.index(t["attack"])))
    # the oracle of a clean run is FedAvg itself
    return [{**t, "agg": agg} for t in out for agg in aggs if not (agg == "oracle" and t["attack"] == "none")]


def _runner(agg: str) -> tuple[str, DefenceConfig | None]:
    """The harness's aggregator name and defence config of a grid column (`robust-fedavg/noclip`)."""
    name, _, variants = agg.partition("/")
    if not variants:
        return name, None
    config = DefenceConfig()
    for variant in variants.split("+"):
        config = replace(config, **VARIANTS[variant])
    return name, config


def _select(ns: argparse.Namespace, t: dict[str, Any]) -> bool:
    scen = ns.scenarios.split(",") if ns.scenarios else None
    atts = ns.attacks.split(",") if ns.attacks else None
    return (scen is None or t["scenario"] in scen) and (atts is None or t["attack"] in atts)


def _key(t: dict[str, Any]) -> str:
    return f"{t['clients']}|{t['alpha']}|{t['scenario']}|{t['attack']}|{t['agg']}"


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {"rows": {}, "meta": {}}


def _append(path: Path, key: str, row: dict[str, Any], meta: dict[str, Any]) -> None:
    """Read-modify-write under an exclusive lock: several shards share the checkpoint."""
    lock = path.with_suffix(".lock")
    with open(lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        data = _load(path)
        data["meta"] = {**data.get("meta", {}), **meta}
        data["rows"][key] = row
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(path)


def _extend(path: Path, key: str, runs: list[dict[str, Any]], secs: float) -> None:
    """Append more seeds' runs to a row already in the checkpoint (under the same lock)."""
    lock = path.with_suffix(".lock")
    with open(lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        data = _load(path)
        row = data["rows"][key]
        row["runs"] = row["runs"] + runs
        row["secs"] = row.get("secs", 0.0) + secs
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(path)


def extend_grid(ns: argparse.Namespace) -> None:
    """Rows with fewer than `--seeds` runs get the missing seeds (e.g. 50 clients run first on 5)."""
    from bench.federated.accuracy import Setting, run

    logging.disable(logging.WARNING)
    shard, of = (int(x) for x in ns.shard.split("/"))
    rows = _load(ns.out)["rows"]
    for i, (key, r) in enumerate(sorted(rows.items())):
        have = len(r["runs"])
        if i % of != shard or have >= ns.seeds:
            continue
        setting = Setting(
            clients=r["clients"], alpha=r["alpha"], frac_bad=r["frac"], attack=r["attack"],
            dropout=r["dropout"], rounds=ns.rounds,
        )  # fmt: skip
        t0 = time.perf_counter()
        name, defence = _runner(r["agg"])
        runs = [run(setting, name, seed, defence) for seed in range(have, ns.seeds)]
        _extend(ns.out, key, runs, time.perf_counter() - t0)
        print(f"{key} +{len(runs)} seeds", flush=True)


def run_grid(ns: argparse.Namespace) -> None:
    from bench.federated.accuracy import Setting, centralized, run

    logging.disable(logging.WARNING)
    shard, of = (int(x) for x in ns.shard.split("/"))
    sizes = tuple(int(c) for c in ns.clients.split(","))
    alphas = tuple(float(a) for a in ns.alphas.split(","))
    meta = {"rounds": ns.rounds, "seeds": ns.seeds}
    if shard == 0 and "centralized" not in _load(ns.out).get("meta", {}):
        meta["centralized"] = [centralized(s) for s in range(ns.seeds)]
    done = set(_load(ns.out)["rows"])
    chosen = [t for t in tasks(sizes, alphas, tuple(ns.aggs.split(","))) if _select(ns, t)]
    for i, t in enumerate(chosen):
        if i % of != shard or _key(t) in done:
            continue
        setting = Setting(
            clients=t["clients"], alpha=t["alpha"], frac_bad=t["frac"], attack=t["attack"],
            dropout=t["dropout"], rounds=ns.rounds,
        )  # fmt: skip
        t0 = time.perf_counter()
        seeds = ns.seeds_50 if t["clients"] >= 50 and ns.seeds_50 else ns.seeds
        name, defence = _runner(t["agg"])
        runs = [run(setting, name, seed, defence) for seed in range(seeds)]
        row = {**t, "runs": runs, "secs": time.perf_counter() - t0}
        _append(ns.out, _key(t), row, meta)
        accs = [r["acc"] for r in runs]
        print(f"{_key(t)} acc {np.mean(accs):.3f} min {np.min(accs):.3f} {row['secs']:.0f}s", flush=True)


def report(path: Path, columns: tuple[str, ...] = ()) -> str:
    """Markdown tables: per (clients, alpha) and scenario, one line per attack, columns per aggregator
    (`columns`, default every aggregator in the file)."""
    data = _load(path)
    central = float(np.mean(data["meta"].get("centralized", [0.9711])))
    rows = data["rows"]
    lines = [f"centralized accuracy (mean over seeds) {central:.4f}; rounds {data['meta'].get('rounds')}"]
    groups = sorted({(r["clients"], r["alpha"]) for r in rows.values()})
    present = {r["agg"] for r in rows.values()}
    aggs = [a for a in ORDER if a in present] + sorted(present - set(ORDER))
    aggs = [a for a in aggs if a in columns] if columns else aggs
    for clients, alpha in groups:
        goal = 0.90 if alpha >= 0.3 else 0.85
        lines += [
            "",
            f"### {clients} clients, alpha={alpha} (attack goal: worst seed >= {goal:.2f}x centralized)",
            "",
        ]
        head = "| scenario | attack | " + " | ".join(aggs) + " |"
        lines += [head, "|" + "---|" * (2 + len(aggs))]
        for scen in ["clean", "cleandrop", *SCENARIOS]:
            attacks = sorted({r["attack"] for r in rows.values() if r["scenario"] == scen})
            for attack in attacks:
                cells = []
                fedavg_clean = rows.get(f"{clients}|{alpha}|{scen}|none|fedavg")
                for agg in aggs:
                    r = rows.get(f"{clients}|{alpha}|{scen}|{attack}|{agg}")
                    if r is None or r["clients"] != clients:
                        cells.append("-")
                        continue
                    cells.append(_cell(r, central, goal, fedavg_clean))
                lines.append(f"| {scen} | {attack} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Cell: accuracy as x centralized, mean / worst seed (seeds below goal); backdoor rows:",
        "backdoor success mean / worst seed; clean rows: x FedAvg clean mean (goal >= 0.97).",
    ]
    return "\n".join(lines)


def goals(path: Path, agg: str = "robust-fedavg") -> str:
    """The issue's goals for `agg` per (clients, alpha), from the rows present (partial grids say so)."""
    data = _load(path)
    central = float(np.mean(data["meta"].get("centralized", [0.9711])))
    rows = data["rows"]
    out = [
        "| clients | alpha | seeds | clean / FedAvg clean (>= 0.97) | worst seed, worst attack (20% att., "
        "full + honest drop) | backdoor mean / worst (<= 5% / 15%) | below FedAvg (mean, > 0.5 pt) |",
        "|---|---|---|---|---|---|---|",
    ]
    for clients, alpha in sorted({(r["clients"], r["alpha"]) for r in rows.values()}):
        mine = {k: r for k, r in rows.items() if k.startswith(f"{clients}|{alpha}|") and r["agg"] == agg}
        if not mine:
            continue
        counts = sorted({len(r["runs"]) for r in mine.values()})
        seeds = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        clean, ref = (
            mine.get(f"{clients}|{alpha}|clean|none|{agg}"),
            rows.get(f"{clients}|{alpha}|clean|none|fedavg"),
        )
        ratio = "-"
        if clean and ref:
            ratio = (
                f"{np.mean([x['acc'] for x in clean['runs']]) / np.mean([x['acc'] for x in ref['runs']]):.3f}"
            )
        attacked = [r for r in mine.values() if r["scenario"] in {"full20", "honestdrop20"}]
        worst = min(attacked, key=lambda r: min(x["acc"] for x in r["runs"]), default=None)
        worst_txt = "-"
        if worst is not None:
            w = min(x["acc"] for x in worst["runs"]) / central
            goal = 0.90 if alpha >= 0.3 else 0.85
            low = sum(x["acc"] / central < goal for x in worst["runs"])
            worst_txt = f"{w:.3f} ({worst['scenario']} {worst['attack']}; {low} below)"
            oracle = rows.get(f"{clients}|{alpha}|{worst['scenario']}|{worst['attack']}|oracle")
            if oracle is not None:
                worst_txt += f"; oracle {min(x['acc'] for x in oracle['runs']) / central:.3f}"
        bds = [r for r in attacked if r["attack"].startswith("backdoor")]
        bd_txt = ", ".join(
            f"{r['scenario']} {r['attack']}: {np.mean([x['backdoor'] for x in r['runs']]):.1%} / "
            f"{max(x['backdoor'] for x in r['runs']):.1%}"
            for r in bds
        )
        below = []
        for k, r in mine.items():
            base = rows.get(k.rsplit("|", 1)[0] + "|fedavg")
            if (
                base
                and np.mean([x["acc"] for x in r["runs"]]) < np.mean([x["acc"] for x in base["runs"]]) - 0.005
            ):
                below.append(f"{r['scenario']} {r['attack']}")
        out.append(
            f"| {clients} | {alpha} | {seeds} | {ratio} | {worst_txt} | {bd_txt or '-'} "
            f"| {', '.join(below) or 'none'} |"
        )
    return "\n".join(out)


def paired(path: Path) -> str:
    """Per setting and column: accuracy minus FedAvg's on the same seeds (mean +- standard error),
    worst seed, backdoor success, rare-class recall and what the defences did (honest devices
    excluded per round, rounds rejected): the ablation's table and the 'never worse' check."""
    rows = _load(path)["rows"]
    present = {r["agg"] for r in rows.values()}
    aggs = [a for a in ORDER if a in present] + sorted(present - set(ORDER))
    out = [
        "| clients | alpha | scenario | attack | column | acc mean | - FedAvg (pt, +-se) | worst seed "
        "| backdoor mean / worst | rare recall | honest excl./round | rejected rounds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    settings = sorted({k.rsplit("|", 1)[0] for k in rows})
    for setting in settings:
        base = rows.get(f"{setting}|fedavg")
        for agg in aggs:
            r = rows.get(f"{setting}|{agg}")
            if r is None:
                continue
            acc = np.array([x["acc"] for x in r["runs"]])
            diff = "-"
            if base is not None and agg != "fedavg":
                n = min(len(acc), len(base["runs"]))
                d = 100 * (acc[:n] - np.array([x["acc"] for x in base["runs"][:n]]))
                diff = f"{d.mean():+.2f} +-{d.std(ddof=1) / np.sqrt(n):.2f}"
            bd = np.array([x["backdoor"] for x in r["runs"]])
            bd_txt = f"{bd.mean():.1%} / {bd.max():.1%}" if r["attack"].startswith("backdoor") else "-"
            excl = np.mean([x.get("honest-excluded", 0.0) for x in r["runs"]])
            rej = np.mean([x.get("rejected", 0.0) for x in r["runs"]])
            rare = np.mean([x["rare_recall"] for x in r["runs"]])
            c, a, scen, att = setting.split("|")
            out.append(
                f"| {c} | {a} | {scen} | {att} | {agg} | {acc.mean():.4f} | {diff} | {acc.min():.4f} "
                f"| {bd_txt} | {rare:.3f} | {excl:.2f} | {rej:.1f} |"
            )
    return "\n".join(out)


def _cell(r: dict[str, Any], central: float, goal: float, fedavg_clean: dict[str, Any] | None) -> str:
    accs = np.array([x["acc"] for x in r["runs"]]) / central
    text = f"{accs.mean():.3f} / {accs.min():.3f} ({int((accs < goal).sum())})"
    if len(accs) < 10:
        text += f" [{len(accs)} seeds]"
    if r["attack"].startswith("backdoor"):
        bd = np.array([x["backdoor"] for x in r["runs"]])
        text += f"; bd {bd.mean():.1%} / {bd.max():.1%}"
    if r["attack"] == "none" and fedavg_clean is not None:
        ref = np.mean([x["acc"] for x in fedavg_clean["runs"]])
        text += f"; {np.mean([x['acc'] for x in r['runs']]) / ref:.3f}x FedAvg"
    return text


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--seeds-50", type=int, default=0, help="seeds at 50+ clients (0: --seeds)")
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--clients", default="20,50")
    p.add_argument("--alphas", default="0.3,0.1")
    p.add_argument("--shard", default="0/1")
    p.add_argument(
        "--aggs", default=",".join(AGGS), help=f"columns; also oracle, robust-fedavg/<{'|'.join(VARIANTS)}>"
    )
    p.add_argument("--scenarios", default="", help="only these scenarios (comma list; default all)")
    p.add_argument("--attacks", default="", help="only these attacks (comma list; default all)")
    p.add_argument("--out", type=Path, default=Path("bench/federated/robust_grid.json"))
    p.add_argument("--report", action="store_true")
    p.add_argument("--extend", action="store_true", help="add the missing seeds to rows already run")
    p.add_argument("--paired", action="store_true", help="print the paired-difference table (ablation)")
    p.add_argument("--columns", default="", help="--report: only these columns (comma list)")
    ns = p.parse_args()
    if ns.paired:
        print(paired(ns.out))
        return 0
    if ns.report:
        print(report(ns.out, tuple(c for c in ns.columns.split(",") if c)))
        print()
        print(goals(ns.out))
        return 0
    if ns.extend:
        extend_grid(ns)
    else:
        run_grid(ns)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
