"""Non-IID digits with Byzantine clients: our numpy trainer + Flower's strategies, in one process.

Each round every client fine-tunes the softmax head (agent.federated.trainer, the code devices
run) and the replies go through Flower's own `aggregate_train` as `Message`s, optionally after
our norm bounding ("+nb"), or through the product's `robust-<rule>` strategies
(fleet_server.federated.strategy.PreAggregated, called as the runner calls it). Attacks at 20% of
clients: sign flip of the update, x10 scaled update, label flip (y -> 9 - y), label flip with a
x10 scaled update, and hidden variants that see the round's honest updates (`HIDDEN`: ALIE, IPM
with eps 0.5 and 10, Gaussian noise). "oracle" averages the honest clients only. Centralized
reference: the same head trained on the pooled training set.
"""

from __future__ import annotations

import uuid

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, MultiKrum, Strategy
from flwr.supercore.task_identity import TaskIdentity

from agent.federated import trainer
from fleet_server.federated.robust import bound_norms
from fleet_server.federated.strategy import PreAggregated, StrategySpec, make_strategy

ATTACKS = ("none", "sign_flip", "scaled", "label_flip", "scaled_label_flip")
HIDDEN = ("alie", "ipm", "ipm_large", "gauss")


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


def centralized(seed: int, epochs: int = 60) -> float:
    xtr, ytr, xte, yte = load()
    w = [np.zeros((64, 10), np.float32), np.zeros(10, np.float32)]
    w, _ = trainer.train(w, xtr, ytr, trainer.TrainParams(lr=0.5, epochs=epochs, batch_size=16, seed=seed))
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
    if attack in {"scaled", "scaled_label_flip"}:
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


def _preaggregate(agg: str, g: ArrayRecord, replies: list[Message]) -> list[Message]:
    if agg.endswith("+nb"):
        bound_norms(g, replies, 1.0)
    return replies


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


def federated(
    *, clients: int, seed: int, agg: str, attack: str, rounds: int = 40, frac_bad: float = 0.2
) -> float:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 0
    rng = np.random.default_rng(seed)
    xtr, ytr, xte, yte = load()
    parts = dirichlet(ytr, clients, 0.3, rng)
    f = round(frac_bad * clients)
    bad = set(rng.choice(clients, f, replace=False).tolist()) if attack != "none" else set()
    arng = np.random.default_rng(seed + 7)
    strat = (
        make_strategy(StrategySpec(agg, min_nodes=clients, malicious=f))
        if agg.startswith("robust-")
        else strategy(agg.split("+", maxsplit=1)[0], clients, f)
    )
    w = [np.zeros((64, 10), np.float32), np.zeros(10, np.float32)]
    for rnd in range(1, rounds + 1):
        g = ArrayRecord({"w": Array(w[0]), "b": Array(w[1])})
        base = _flat(w)
        deltas = []
        for c, idx in enumerate(parts):
            y = 9 - ytr[idx] if (c in bad and attack.endswith("label_flip")) else ytr[idx]
            new, _ = trainer.train(
                w, xtr[idx], y, trainer.TrainParams(lr=0.5, epochs=2, batch_size=16, seed=seed * 1000 + rnd)
            )
            deltas.append(_flat(new) - base)
        honest = np.stack([d for c, d in enumerate(deltas) if c not in bad])
        replies = []
        for c, idx in enumerate(parts):
            delta = attack_updates(attack, honest, deltas[c], clients, f, arng) if c in bad else deltas[c]
            req = Message(
                RecordDict({"arrays": g, "config": ConfigRecord({})}), dst_node_id=c + 2, message_type="train"
            )
            req.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            replies.append(_reply(req, _unflat(base + delta, w), len(idx)))
        if agg == "oracle":  # FedAvg over the honest clients only: the best any rule can do
            replies = [r for c, r in enumerate(replies) if c not in bad]
        replies = _preaggregate(agg, g, replies)
        if isinstance(strat, PreAggregated):  # the product's composition, exactly as the runner calls it
            list(strat.configure_train(rnd, g, ConfigRecord({}), _Nodes(clients)))  # type: ignore[arg-type]
        elif isinstance(strat, MultiKrum):  # replies dropped as opposed count against f
            strat.num_nodes_to_select = max(1, len(replies) - max(0, f - (clients - len(replies))))
        out, _ = strat.aggregate_train(rnd, replies)
        if out is not None:
            w = [out["w"].numpy(), out["b"].numpy()]
    return acc(w, xte, yte)
