"""Non-IID digits with Byzantine clients: our numpy trainer + Flower's strategies, in one process.

Each round every replying client fine-tunes the softmax head (agent.federated.trainer, the code
devices run) and the replies go through Flower's own `aggregate_train` as `Message`s, optionally
after our norm bounding ("+nb"), or through the product's `robust-<rule>` strategies
(fleet_server.federated.strategy, called as the runner calls it, with the server's root data
through the same port the runner passes). A `Setting` fixes the Dirichlet alpha, the number of
clients, the attacker fraction, the attack and the participation:

- attacks: sign flip of the update, x10 scaled update, label flip (y -> 9 - y), label flip with a
  x10 scaled update, hidden variants that see the round's honest updates (`HIDDEN`: ALIE, IPM
  with eps 0.5 and 10, Gaussian noise), and `BACKDOOR`: half of each attacker's samples carry a
  2x2 trigger in the top-left corner (pixels 0, 1, 8, 9 set to 1) relabelled to class 0, with
  and without a x10 boost of the update;
- dropouts: `honest` (30% of the honest clients fail each round, attackers always reply) or
  `random` (30% of all clients); failures reach the strategy as error replies, as FleetGrid
  reports them.

Metrics of a run: test accuracy, backdoor success (share of triggered test images of other
classes predicted as the target), recall of the "rare" class (the class whose training images
are most concentrated on one device) and the aggregation seconds per round. The server's root
set is 10 training images per class drawn with the seed (a calibration set the registry holds);
clients keep their whole shards. "oracle" averages the honest clients only. Centralized
reference: the same head trained on the pooled training set.
"""

from __future__ import annotations

import functools
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, MultiKrum, Strategy
from flwr.supercore.task_identity import TaskIdentity

from agent.federated import trainer
from fleet_server.federated.defences.pipeline import DefenceConfig, Defended
from fleet_server.federated.robust import bound_norms
from fleet_server.federated.rootdata import RootSet
from fleet_server.federated.strategy import StrategySpec, make_strategy

ATTACKS = ("none", "sign_flip", "scaled", "label_flip", "scaled_label_flip")
HIDDEN = ("alie", "ipm", "ipm_large", "gauss")
BACKDOOR = ("backdoor", "backdoor_scaled")
TRIGGER = (0, 1, 8, 9)
TARGET = 0
LR, EPOCHS, BATCH = 0.5, 2, 16


@dataclass(frozen=True)
class Setting:
    clients: int = 20
    alpha: float = 0.3
    frac_bad: float = 0.2
    attack: str = "none"
    dropout: str = "none"  # none | honest | random
    drop_rate: float = 0.3
    rounds: int = 40
    root_per_class: int = 10


@functools.cache
def load() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=0.25, random_state=0, stratify=d.target)
    return xtr, ytr.astype(np.int64), xte, yte.astype(np.int64)


def dirichlet(
    y: np.ndarray, clients: int, alpha: float, rng: np.random.Generator, min_size: int = 5
) -> list[np.ndarray]:
    while True:
        parts: list[list[int]] = [[] for _ in range(clients)]
        for label in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == label))
            cuts = (np.cumsum(rng.dirichlet([alpha] * clients)) * len(idx)).astype(int)[:-1]
            for part, chunk in zip(parts, np.split(idx, cuts), strict=True):
                part.extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.array(p) for p in parts]


@functools.cache
def _partition(clients: int, alpha: float, seed: int) -> tuple[list[np.ndarray], dict[str, Any]]:
    """The seed's Dirichlet shards (rejection sampling is slow at alpha 0.1) and the rng state after."""
    rng = np.random.default_rng(seed)
    parts = dirichlet(load()[1], clients, alpha, rng)
    return parts, rng.bit_generator.state


def strategy(name: str, n: int, f: int) -> Strategy:
    common = {"min_train_nodes": 2, "min_available_nodes": 2}
    if name.startswith("fedavg") or name == "oracle":
        return FedAvg(**common)  # type: ignore[arg-type]
    if name.startswith("trimmed"):
        return FedTrimmedAvg(beta=0.2, **common)  # type: ignore[arg-type]
    if name.startswith("median"):
        return FedMedian(**common)  # type: ignore[arg-type]
    return MultiKrum(num_malicious_nodes=f, num_nodes_to_select=n - f, **common)  # type: ignore[arg-type]


def _reply(request: Message, w: list[np.ndarray], n: int) -> Message:
    arrays = ArrayRecord({"w": Array(w[0]), "b": Array(w[1])})
    return Message(
        RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": n})}), reply_to=request
    )


def acc(w: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    return trainer.evaluate(w, x, y)[1]


def triggered(x: np.ndarray) -> np.ndarray:
    out = x.copy()
    out[:, list(TRIGGER)] = 1.0
    return out


def backdoor_success(w: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    keep = y != TARGET
    logits = triggered(x[keep]) @ w[0] + w[1]
    return float(np.mean(np.argmax(logits, axis=1) == TARGET))


def rare_class(parts: list[np.ndarray], y: np.ndarray) -> tuple[int, float]:
    """The class whose training images are most concentrated on one device, and that share."""
    best, share = 0, 0.0
    for label in range(10):
        total = max(1, int(np.sum(y == label)))
        top = max(int(np.sum(y[p] == label)) for p in parts) / total
        if top > share:
            best, share = label, top
    return best, share


def recall(w: list[np.ndarray], x: np.ndarray, y: np.ndarray, label: int) -> float:
    keep = y == label
    return float(np.mean(np.argmax(x[keep] @ w[0] + w[1], axis=1) == label))


def centralized(seed: int, epochs: int = 60) -> float:
    xtr, ytr, xte, yte = load()
    w = [np.zeros((64, 10), np.float32), np.zeros(10, np.float32)]
    w, _ = trainer.train(w, xtr, ytr, trainer.TrainParams(lr=LR, epochs=epochs, batch_size=16, seed=seed))
    return acc(w, xte, yte)


def _alie_z(n: int, f: int) -> float:
    """Baruch et al. 2019: the largest z that keeps the attackers inside a majority's spread."""
    from statistics import NormalDist

    s = n // 2 + 1 - f
    return NormalDist().inv_cdf((n - s) / n)


def attack_updates(
    attack: str, honest: np.ndarray, own: np.ndarray, n: int, f: int, rng: np.random.Generator
) -> np.ndarray:
    """The update (flat delta) a Byzantine client sends; `honest` stacks this round's honest deltas."""
    if attack == "sign_flip":
        return -own
    if attack in {"scaled", "scaled_label_flip", "backdoor_scaled"}:
        return 10.0 * own
    if attack == "alie":
        return honest.mean(0) - _alie_z(n, f) * honest.std(0)
    if attack == "ipm":  # Xie et al. 2020, inner-product manipulation, eps = 0.5
        return -0.5 * honest.mean(0)
    if attack == "ipm_large":
        return -10.0 * honest.mean(0)
    if attack == "gauss":  # random update, 1.0 std per coordinate
        return rng.normal(0.0, 1.0, own.shape)
    return own


def _poison(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Half of an attacker's samples get the trigger and the target label."""
    pick = rng.random(len(x)) < 0.5
    x, y = x.copy(), y.copy()
    x[pick] = triggered(x[pick])
    y[pick] = TARGET
    return x, y


class _Nodes:
    """Just enough of a Grid for `configure_train` (its messages are not used here)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def get_node_ids(self) -> list[int]:
        return [c + 2 for c in range(self.n)]


def _flat(w: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([a.ravel() for a in w]).astype(np.float64)


def _unflat(v: np.ndarray, like: list[np.ndarray]) -> list[np.ndarray]:
    out, i = [], 0
    for a in like:
        out.append(v[i : i + a.size].reshape(a.shape).astype(np.float32))
        i += a.size
    return out


def _make(agg: str, s: Setting, f: int, root: RootSet, defence: DefenceConfig | None) -> Strategy:
    if agg.startswith("robust-"):
        spec = StrategySpec(agg, min_nodes=s.clients, malicious=f)
        return make_strategy(spec, root=root, defence=defence)
    return strategy(agg.split("+", maxsplit=1)[0], s.clients, f)


def run(setting: Setting, agg: str, seed: int, defence: DefenceConfig | None = None) -> dict[str, Any]:
    """One training run; returns accuracy, backdoor success, rare-class recall and timing."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 0
    s = setting
    xtr, ytr, xte, yte = load()
    parts, state = _partition(s.clients, s.alpha, seed)
    rng = np.random.default_rng()
    rng.bit_generator.state = state  # as if the partition had just been drawn from default_rng(seed)
    f = round(s.frac_bad * s.clients)  # what the operator assumes, attack or not
    bad = set(rng.choice(s.clients, f, replace=False).tolist()) if s.attack != "none" else set()
    arng = np.random.default_rng(seed + 7)
    drng = np.random.default_rng(seed + 13)
    root_rng = np.random.default_rng(seed + 99)
    root_idx = np.concatenate(
        [root_rng.choice(np.flatnonzero(ytr == c), s.root_per_class, replace=False) for c in range(10)]
    )
    root = RootSet(xtr[root_idx], ytr[root_idx])
    poisoned = {
        c: _poison(xtr[parts[c]], ytr[parts[c]], np.random.default_rng(seed * 31 + c))
        for c in bad
        if s.attack in BACKDOOR
    }
    strat = _make(agg, s, f, root, defence)
    config = ConfigRecord({"lr": LR, "local-epochs": EPOCHS, "batch-size": BATCH})
    w = [np.zeros((64, 10), np.float32), np.zeros(10, np.float32)]
    agg_s = 0.0
    stats: dict[str, float] = {}
    for rnd in range(1, s.rounds + 1):
        g = ArrayRecord({"w": Array(w[0]), "b": Array(w[1])})
        base = _flat(w)
        if s.dropout == "honest":
            pool = [c for c in range(s.clients) if c not in bad]
            down = set(drng.choice(pool, round(s.drop_rate * len(pool)), replace=False).tolist())
        elif s.dropout == "random":
            down = set(drng.choice(s.clients, round(s.drop_rate * s.clients), replace=False).tolist())
        else:
            down = set()
        deltas: dict[int, np.ndarray] = {}
        for c, idx in enumerate(parts):
            if c in down:
                continue
            x, y = poisoned.get(c, (xtr[idx], ytr[idx]))
            if c in bad and s.attack.endswith("label_flip"):
                y = 9 - y
            params = trainer.TrainParams(lr=LR, epochs=EPOCHS, batch_size=BATCH, seed=seed * 1000 + rnd)
            new, _ = trainer.train(w, x, y, params)
            deltas[c] = _flat(new) - base
        honest = np.stack([d for c, d in deltas.items() if c not in bad])
        replies = []
        for c, idx in enumerate(parts):
            req = Message(
                RecordDict({"arrays": g, "config": config}), dst_node_id=c + 2, message_type="train"
            )
            req.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            if c in down:
                replies.append(Message(Error(code=1, reason="device failed"), reply_to=req))
                continue
            delta = attack_updates(s.attack, honest, deltas[c], s.clients, f, arng) if c in bad else deltas[c]
            replies.append(_reply(req, _unflat(base + delta, w), len(idx)))
        if agg == "oracle":  # FedAvg over the honest clients only: the best any rule can do
            replies = [r for c, r in enumerate(replies) if c not in bad]
        if agg.endswith("+nb"):
            bound_norms(g, [r for r in replies if not r.has_error()], 1.0)
        t0 = time.perf_counter()
        if agg.startswith("robust-"):  # the product's composition, exactly as the runner calls it
            list(strat.configure_train(rnd, g, config, _Nodes(s.clients)))  # type: ignore[arg-type]
        elif isinstance(strat, MultiKrum):  # Krum knows f; the attackers that replied count
            valid = sum(not r.has_error() for r in replies)
            strat.num_nodes_to_select = max(1, valid - f)
        out, metrics = strat.aggregate_train(rnd, replies)
        agg_s += time.perf_counter() - t0
        for key in ("robust-excluded", "robust-rejected", "robust-sybil"):
            if metrics is not None and key in metrics:
                stats[key] = stats.get(key, 0.0) + float(metrics[key])  # type: ignore[arg-type]
        if isinstance(strat, Defended):
            honest_out = sum(node not in {c + 2 for c in bad} for node in strat.excluded)
            stats["robust-honest-excluded"] = stats.get("robust-honest-excluded", 0.0) + honest_out
        if out is not None:
            w = [out["w"].numpy(), out["b"].numpy()]
    label, share = rare_class(parts, ytr)
    return {
        "acc": acc(w, xte, yte),
        "backdoor": backdoor_success(w, xte, yte),
        "rare_class": label,
        "rare_share": share,
        "rare_recall": recall(w, xte, yte, label),
        "agg_s_per_round": agg_s / s.rounds,
        # robust-<rule> only: devices excluded per round, rounds rejected, devices grouped per round
        **{k[len("robust-") :]: v / (1 if k == "robust-rejected" else s.rounds) for k, v in stats.items()},
    }


def federated(
    *, clients: int, seed: int, agg: str, attack: str, rounds: int = 40, frac_bad: float = 0.2
) -> float:
    """The original harness entry (alpha 0.3, every client replies): test accuracy only."""
    setting = Setting(clients=clients, attack=attack, rounds=rounds, frac_bad=frac_bad)
    return float(run(setting, agg, seed)["acc"])
