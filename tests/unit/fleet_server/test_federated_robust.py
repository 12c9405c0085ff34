"""Pre-aggregation against Byzantine updates: opposed-update filter, median norm bound, and the
`robust-<rule>` strategies that put both in front of Flower's unchanged aggregation."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, MultiKrum
from flwr.supercore.task_identity import TaskIdentity

from fleet_server.federated.robust import bound_to_median, drop_opposed
from fleet_server.federated.strategy import ROBUST, PreAggregated, StrategySpec, make_strategy


def _reply(w: np.ndarray, node: int = 5) -> Message:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 0
    req = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=node, message_type="train")
    req.metadata.__dict__["_message_id"] = uuid.uuid4().hex
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(w.astype(np.float32))}),
            "metrics": MetricRecord({"num-examples": 10}),
        }
    )
    return Message(content, reply_to=req)


def _honest(rng: np.random.Generator, k: int) -> list[np.ndarray]:
    return [np.ones(20) + rng.normal(0, 0.3, 20) for _ in range(k)]


def _w(msg: Message) -> np.ndarray:
    return msg.content["arrays"]["w"].numpy()


def test_drop_opposed_removes_the_most_opposed_up_to_max_drop() -> None:
    rng = np.random.default_rng(0)
    g = ArrayRecord({"w": Array(np.zeros(20, np.float32))})
    honest = _honest(rng, 8)
    replies = [_reply(u) for u in [*honest, -honest[0], -3 * honest[1]]]
    kept = drop_opposed(g, replies, max_drop=2)
    assert kept == replies[:8]
    assert drop_opposed(g, replies, max_drop=1) == [*replies[:8], replies[8]]  # the most opposed first
    assert drop_opposed(g, replies[:8], max_drop=2) == replies[:8]  # nothing opposed: nothing dropped


def test_bound_to_median_scales_only_updates_above_the_median_norm() -> None:
    rng = np.random.default_rng(1)
    g = ArrayRecord({"w": Array(np.full(20, 0.5, np.float32))})
    updates = [*_honest(rng, 6), 50 * np.ones(20)]
    replies = [_reply(0.5 + u) for u in updates]
    bound = bound_to_median(g, replies)
    assert bound == pytest.approx(float(np.median([np.linalg.norm(u) for u in updates])), rel=1e-5)
    norms = [float(np.linalg.norm(_w(m) - 0.5)) for m in replies]
    assert max(norms) <= bound * (1 + 1e-5)
    assert norms[6] == pytest.approx(bound, rel=1e-4)
    small = min(range(6), key=lambda i: np.linalg.norm(updates[i]))
    assert np.allclose(_w(replies[small]), 0.5 + updates[small], atol=1e-6)  # below the median: untouched


@pytest.mark.parametrize("inner", ["fedavg", "multikrum"])
def test_robust_strategy_keeps_flowers_rule_and_resists_flip_and_scale(inner: str) -> None:
    strat = make_strategy(StrategySpec(f"robust-{inner}", min_nodes=10, malicious=2))
    assert isinstance(strat, PreAggregated) and f"robust-{inner}" in ROBUST
    assert isinstance(strat.inner, MultiKrum if inner == "multikrum" else FedAvg)
    rng = np.random.default_rng(2)
    g = ArrayRecord({"w": Array(np.zeros(20, np.float32))})
    honest = _honest(rng, 8)

    class NoGrid:  # configure_train only records the global arrays here
        def get_node_ids(self) -> list[int]:
            return list(range(10))

    list(strat.configure_train(1, g, ConfigRecord({}), NoGrid()))  # type: ignore[arg-type]
    replies = [_reply(u, node=i + 1) for i, u in enumerate([*honest, -honest[0], 100 * honest[1]])]
    out, _ = strat.aggregate_train(1, replies)
    assert out is not None
    got, mean = out["w"].numpy(), np.mean(honest, axis=0)
    plain, _ = FedAvg().aggregate_train(1, [_reply(u) for u in [*honest, -honest[0], 100 * honest[1]]])
    assert plain is not None and np.linalg.norm(plain["w"].numpy() - mean) > 5
    assert np.linalg.norm(got - mean) < 0.3 * np.linalg.norm(mean)
    if isinstance(strat.inner, MultiKrum):
        assert strat.inner.num_nodes_to_select == 7  # one dropped as opposed, then Krum keeps 9 - f


def test_robust_default_drop_budget_and_unknown_inner_rule() -> None:
    strat = make_strategy(StrategySpec("robust-fedtrimmedavg", min_nodes=20))
    assert isinstance(strat, PreAggregated) and strat.max_drop == 4
    with pytest.raises(Exception, match="unknown strategy"):
        make_strategy(StrategySpec("robust-fedprox"))


def test_drop_opposed_with_history_judges_nodes_over_rounds() -> None:
    rng = np.random.default_rng(3)
    g = ArrayRecord({"w": Array(np.zeros(20, np.float32))})
    history: dict[int, float] = {}
    honest = _honest(rng, 8)
    first = [_reply(u, node=i + 1) for i, u in enumerate([*honest, -honest[0]])]
    assert [m.metadata.src_node_id for m in drop_opposed(g, first, 1, history)] == list(range(1, 9))
    # next round node 9 is only mildly opposed and node 1 is opposed once: node 9 stays the one dropped
    later = [*honest[1:], -0.2 * honest[0] + honest[2] * 0.1, -honest[3]]
    replies = [_reply(u, node=i + 2) for i, u in enumerate(later[:7])]
    replies += [_reply(later[7], node=9), _reply(later[8], node=1)]
    kept = drop_opposed(g, replies, 1, history)
    assert 9 not in [m.metadata.src_node_id for m in kept] and 1 in [m.metadata.src_node_id for m in kept]
    assert history[9] < history[1] < 0 < min(history[n] for n in range(2, 9))
