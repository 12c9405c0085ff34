"""Non-IID digits with Byzantine clients: our numpy trainer + Flower's strategies, in one process.

Each round every client fine-tunes the softmax head (agent.federated.trainer, the code devices
run) and the replies go through Flower's own `aggregate_train` as `Message`s, optionally after
our norm bounding (fleet_server.federated.robust). Attacks at 20% of clients: sign flip of the
update, x10 scaled update, label flip (y -> 9 - y), and label flip with a x10 scaled
update. Centralized reference: the same head trained
on the pooled training set.
"""

from __future__ import annotations

import uuid

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, MultiKrum, Strategy
from flwr.supercore.task_identity import TaskIdentity

from agent.federated import trainer
from fleet_server.federated.robust import bound_norms

ATTACKS = ("none", "sign_flip", "scaled", "label_flip", "scaled_label_flip")


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
    if name.startswith("fedavg"):
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


def federated(
    *, clients: int, seed: int, agg: str, attack: str, rounds: int = 40, frac_bad: float = 0.2
) -> float:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 0
    rng = np.random.default_rng(seed)
    xtr, ytr, xte, yte = load()
    parts = dirichlet(ytr, clients, 0.3, rng)
    bad = (
        set(rng.choice(clients, round(frac_bad * clients), replace=False).tolist())
        if attack != "none"
        else set()
    )
    f = round(frac_bad * clients)
    strat = strategy(agg, clients, f)
    bound = 1.0 if agg.endswith("+nb") else 0.0
    w = [np.zeros((64, 10), np.float32), np.zeros(10, np.float32)]
    for rnd in range(1, rounds + 1):
        g = ArrayRecord({"w": Array(w[0]), "b": Array(w[1])})
        replies = []
        for c, idx in enumerate(parts):
            y = 9 - ytr[idx] if (c in bad and attack.endswith("label_flip")) else ytr[idx]
            new, _ = trainer.train(
                w, xtr[idx], y, trainer.TrainParams(lr=0.5, epochs=2, batch_size=16, seed=seed * 1000 + rnd)
            )
            if c in bad and attack in {"sign_flip", "scaled", "scaled_label_flip"}:
                k = -1.0 if attack == "sign_flip" else 10.0
                new = [(o + k * (nw - o)).astype(np.float32) for o, nw in zip(w, new, strict=True)]
            req = Message(
                RecordDict({"arrays": g, "config": ConfigRecord({})}), dst_node_id=c + 2, message_type="train"
            )
            req.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            replies.append(_reply(req, new, len(idx)))
        if bound:
            bound_norms(g, replies, bound)
        out, _ = strat.aggregate_train(rnd, replies)
        if out is not None:
            w = [out["w"].numpy(), out["b"].numpy()]
    return acc(w, xte, yte)
