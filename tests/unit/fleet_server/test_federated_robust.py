"""The robust-aggregation defences one by one (pure numpy), and the `robust-<rule>` strategy that
composes them in front of Flower's rule, with the server's root set."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, MultiKrum
from flwr.supercore.task_identity import TaskIdentity

from fleet_server.errors import InvalidRequestError
from fleet_server.federated.defences import bucketing, clipping, dormant, flame, sybil, validation
from fleet_server.federated.defences.head import HeadOracle
from fleet_server.federated.defences.pipeline import DefenceConfig, Defended
from fleet_server.federated.defences.reputation import Reputation, cosines
from fleet_server.federated.rootdata import RootSet, StaticRootData
from fleet_server.federated.strategy import ROBUST, StrategySpec, make_strategy


def _honest(rng: np.random.Generator, k: int, d: int = 20) -> list[np.ndarray]:
    return [np.ones(d) + rng.normal(0, 0.3, d) for _ in range(k)]


def test_reputation_excludes_persistent_opponents_only_up_to_the_budget() -> None:
    rng = np.random.default_rng(0)
    ref = np.ones(20)
    rep = Reputation()
    devices = list(range(10))
    for _ in range(3):
        rows = np.stack([*_honest(rng, 8), -np.ones(20), -np.ones(20) + rng.normal(0, 2, 20)])
        score = rep.observe(devices, cosines(rows, ref))
    assert list(np.flatnonzero(Reputation.excluded(score, max_drop=2))) == [8, 9]
    assert list(np.flatnonzero(Reputation.excluded(score, max_drop=1))) == [8]  # most negative first
    assert not Reputation.excluded(score[:8], max_drop=2).any()  # nobody negative: nobody excluded
    assert rep.book[8] == pytest.approx(-3.0)  # the running sum is kept per device (across runs too)


def test_sybil_groups_near_identical_updates_but_not_similar_honest_ones() -> None:
    rng = np.random.default_rng(1)
    crafted = rng.normal(0, 1, 20)
    honest = 0.5 + rng.normal(0, 1, (6, 20))  # non-IID: alike in direction, never near-identical
    rows = np.vstack([honest, crafted, crafted, crafted * 3])
    sizes = sybil.group_sizes(rows, 0.95)
    assert list(sizes[6:]) == [3, 3, 3] and list(sizes[:6]) == [1] * 6


def test_clip_to_median_bounds_boosted_updates_and_leaves_the_rest() -> None:
    rng = np.random.default_rng(2)
    rows = np.stack([*_honest(rng, 6), 50 * np.ones(20)])
    out, bound = clipping.clip_to_median(rows, factor=2.0)
    assert bound == pytest.approx(2 * float(np.median(np.linalg.norm(rows, axis=1))))
    assert np.linalg.norm(out[6]) == pytest.approx(bound)
    assert np.allclose(out[:6], rows[:6])


def test_centered_clip_limits_an_attackers_pull_to_tau_times_its_share() -> None:
    rng = np.random.default_rng(3)
    honest = np.stack(_honest(rng, 9))
    rows = np.vstack([honest, 1000 * np.ones((1, 20))])
    agg = clipping.centered_clip(rows, np.ones(10), center=honest.mean(0), tau=5.0, iters=1)
    assert np.linalg.norm(agg - honest.mean(0)) <= 0.5 + 1e-9  # 1 of 10 rows, clipped to tau = 5
    assert np.linalg.norm(rows.mean(0) - honest.mean(0)) > 50


def test_buckets_keep_the_weighted_mean() -> None:
    rng = np.random.default_rng(4)
    rows, weights = rng.normal(0, 1, (7, 5)), rng.integers(1, 9, 7).astype(float)
    means, totals = bucketing.buckets(rows, weights, 2, rng)
    assert means.shape == (4, 5) and totals.sum() == weights.sum()
    assert np.allclose(totals @ means / totals.sum(), weights @ rows / weights.sum())


def test_dormant_median_touches_only_masked_coordinates() -> None:
    rows = np.array([[1.0, 0.0], [1.2, 0.0], [0.8, 0.0], [1.0, 9.0]])
    agg, n = dormant.median_on(np.array([False, True]), rows.mean(0), rows)
    assert n == 1 and agg[0] == pytest.approx(1.0) and agg[1] == 0.0


def test_flame_majority_keeps_the_dense_cluster() -> None:
    rng = np.random.default_rng(5)
    rows = np.stack([*_honest(rng, 7), -np.ones(20), rng.normal(0, 1, 20)])
    keep = flame.majority(rows)
    assert keep.sum() >= 5 and not keep[7:].any()  # at least n/2 + 1 kept, the outliers dropped


def test_validation_rejects_an_aggregate_that_makes_the_root_loss_worse() -> None:
    assert validation.accept(1.0, 1.05) and validation.accept(1.0, 0.5)
    assert not validation.accept(1.0, 1.2)


def _root(n: int = 60, seed: int = 0) -> RootSet:
    """Four classes told apart by features 0-3; features 4 and 5 are never active (dormant)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = np.zeros((n, 6))
    x[np.arange(n), y] = 1.0
    x[:, :4] += rng.normal(0, 0.1, (n, 4))
    return RootSet(x, y)


def test_head_oracle_trains_scores_and_finds_dormant_features() -> None:
    root = _root()
    arrays = ArrayRecord({"w": Array(np.zeros((6, 4), np.float32)), "b": Array(np.zeros(4, np.float32))})
    oracle = HeadOracle.for_arrays(root, arrays)
    assert oracle is not None
    v = np.zeros(28)
    step = oracle.update(v, lr=0.5, epochs=2, batch=16, seed=0)
    assert oracle.loss_acc(v + step)[0] < oracle.loss_acc(v)[0] and oracle.loss_acc(v + step)[1] > 0.9
    mask = oracle.dormant()
    assert mask.reshape(-1)[:24].reshape(6, 4)[4:].all() and not mask[:16].any() and not mask[24:].any()
    wrong = ArrayRecord({"w": Array(np.zeros((5, 4), np.float32)), "b": Array(np.zeros(4, np.float32))})
    assert HeadOracle.for_arrays(root, wrong) is None  # features do not fit: no root defences
    assert HeadOracle.for_arrays(None, arrays) is None


def test_root_set_refuses_what_no_model_can_use() -> None:
    with pytest.raises(InvalidRequestError, match="root set needs"):
        RootSet(np.zeros((3, 2)), np.zeros(2, np.int64))
    with pytest.raises(InvalidRequestError, match="non-negative integers"):
        RootSet(np.zeros((2, 2)), np.array([0.5, 1.0]))
    assert StaticRootData(None).for_model("m") is None


class _NoGrid:  # configure_train only records the global arrays and the train config here
    def get_node_ids(self) -> list[int]:
        return list(range(1, 31))


def _reply(w: np.ndarray, b: np.ndarray, node: int, n: int = 10) -> Message:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 0
    req = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=node, message_type="train")
    req.metadata.__dict__["_message_id"] = uuid.uuid4().hex
    arrays = ArrayRecord({"w": Array(w.astype(np.float32)), "b": Array(b.astype(np.float32))})
    return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": n})}), reply_to=req)


def _round(strat: Defended, g: tuple[np.ndarray, np.ndarray], rows: list[np.ndarray], rnd: int = 1):  # type: ignore[no-untyped-def]
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 0
    base = ArrayRecord({"w": Array(g[0].astype(np.float32)), "b": Array(g[1].astype(np.float32))})
    cfg = ConfigRecord({"lr": 0.5, "local-epochs": 2, "batch-size": 16})
    list(strat.configure_train(rnd, base, cfg, _NoGrid()))  # type: ignore[arg-type]
    replies = [_reply(g[0] + r[:24].reshape(6, 4), g[1] + r[24:], node=i + 1) for i, r in enumerate(rows)]
    return strat.aggregate_train(rnd, replies)


@pytest.mark.parametrize("inner", ["fedavg", "multikrum"])
def test_robust_strategy_resists_flip_scale_and_a_trigger_on_dormant_features(inner: str) -> None:
    root = _root()
    strat = make_strategy(StrategySpec(f"robust-{inner}", min_nodes=10, malicious=2), root=root)
    assert isinstance(strat, Defended) and f"robust-{inner}" in ROBUST
    assert isinstance(strat.inner, MultiKrum if inner == "multikrum" else FedAvg)
    oracle = HeadOracle(root, 6, 4)
    g = np.zeros(28)
    rng = np.random.default_rng(6)
    live = np.ones(28)
    live[16:24] = 0  # honest devices never see features 4 and 5: nothing to learn there
    honest = [oracle.update(g, 0.5, 2, 16, seed=s) + live * rng.normal(0, 0.3, 28) for s in range(8)]
    trigger = np.zeros(28)
    trigger[16:20] = [-1, -1, -1, 3]  # feature 4 (dormant on clean data) -> class 3
    rows = [*honest, -10 * honest[0], honest[1] + 5 * trigger]
    out, metrics = _round(strat, (np.zeros((6, 4)), np.zeros(4)), rows)
    assert out is not None and metrics is not None
    got = np.concatenate([out["w"].numpy().ravel(), out["b"].numpy()])
    mean = np.mean(honest, axis=0)
    assert np.linalg.norm(got - mean) < 0.3 * np.linalg.norm(mean)
    assert np.abs(got[16:24]).max() < 1e-6  # the trigger's weights stay at zero
    assert metrics["robust-excluded"] == 1 and metrics["robust-rejected"] == 0
    assert oracle.loss_acc(got)[0] < oracle.loss_acc(g)[0]


def test_a_round_that_makes_the_model_worse_on_the_root_set_is_rejected() -> None:
    root = _root()
    cfg = DefenceConfig(reputation=False, sybil=0.0, clip_factor=0.0)  # only validation stands
    strat = make_strategy(StrategySpec("robust-fedavg", min_nodes=10), root=root, defence=cfg)
    assert isinstance(strat, Defended)
    oracle = HeadOracle(root, 6, 4)
    g = oracle.update(np.zeros(28), 0.5, 4, 16, seed=0)  # a model that already works
    rows = [-3 * g for _ in range(6)]
    w0, b0 = g[:24].reshape(6, 4), g[24:]
    out, metrics = _round(strat, (w0, b0), rows)
    assert out is not None and metrics is not None and metrics["robust-rejected"] == 1
    assert np.allclose(out["w"].numpy(), w0, atol=1e-6)  # the model stays


def test_without_a_root_set_the_median_update_is_the_reference() -> None:
    strat = make_strategy(StrategySpec("robust-fedtrimmedavg", min_nodes=20))
    assert isinstance(strat, Defended) and strat.max_drop == 4 and strat.root is None
    rng = np.random.default_rng(7)
    honest = [np.concatenate([r, np.zeros(8)]) for r in _honest(rng, 8)]
    out, metrics = _round(strat, (np.zeros((6, 4)), np.zeros(4)), [*honest, -5 * honest[0]])
    assert out is not None and metrics is not None and metrics["robust-excluded"] == 1
    assert "robust-rejected" not in metrics  # nothing to validate against
    with pytest.raises(InvalidRequestError, match="unknown strategy"):
        make_strategy(StrategySpec("robust-fedprox"))


def test_clip_per_step_spares_devices_that_trained_longer_but_not_boosted_ones() -> None:
    rng = np.random.default_rng(12)
    steps = np.array([4.0, 4.0, 4.0, 4.0, 16.0, 4.0])
    rows = np.stack([*_honest(rng, 4), 4 * _honest(rng, 1)[0], 10 * _honest(rng, 1)[0]])
    plain, _ = clipping.clip_to_median(rows, factor=2.0)
    assert np.linalg.norm(plain[4]) < 0.6 * np.linalg.norm(rows[4])  # norm alone: the long trainer is cut
    out, bound = clipping.clip_to_median(rows, factor=2.0, steps=steps)
    assert np.allclose(out[:5], rows[:5])  # per step it is like the others
    assert np.linalg.norm(out[5]) == pytest.approx(bound) and bound < 0.3 * np.linalg.norm(rows[5])


def test_dormant_per_class_keeps_a_quiet_features_weights_for_the_class_that_draws_it() -> None:
    root = _root()
    x = root.x.copy()
    x[:, 0] += 1.0  # one feature every image lights up: the most active one
    x[root.y == 2, 4] = 0.3  # feature 4: quiet overall (a quarter of the images, faint), class 2 draws it
    oracle = HeadOracle(RootSet(x, root.y), 6, 4)
    whole = oracle.dormant(0.1)[:24].reshape(6, 4)
    mine = oracle.dormant(0.1, per_class=True)[:24].reshape(6, 4)
    assert whole[4].all() and whole[5].all()  # per feature: all of feature 4's weights are masked
    assert not mine[4, 2] and mine[4, [0, 1, 3]].all() and mine[5].all()  # class 2 keeps its weight
    assert not mine[:4].any()


def test_dormant_gate_keeps_the_mean_only_where_the_root_gradient_backs_it() -> None:
    rows = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [3.0, 3.0, 3.0]])
    mean, mask = rows.mean(0), np.array([True, True, True])
    grad = np.array([-1.0, 0.0, 1.0])  # backs the mean's move / root set silent / against it
    out, n = dormant.median_on(mask, mean, rows, root_grad=grad)
    assert n == 2 and out[0] == pytest.approx(0.75) and out[1] == 0.0 and out[2] == 0.0


def test_a_minority_holding_a_class_keeps_its_faint_feature_and_a_trigger_on_a_dead_one_does_not() -> None:
    root = _root(n=80)
    x = root.x.copy()
    x[:, 0] += 1.0  # a feature every image lights up
    x[root.y == 2, 4] = 0.2  # feature 4: faint, only class 2 draws it (masked even per class)
    root = RootSet(x, root.y)
    only = {"reputation": False, "sybil": 0.0, "clip_factor": 0.0, "validate": False}
    rows = [np.zeros(28) for _ in range(8)]
    for i in (0, 1):  # the two devices that hold class 2 learn weight (4, 2)
        rows[i][4 * 4 + 2] = 1.0
    rows[7][5 * 4 + 0] = 5.0  # an attacker pushes a trigger on feature 5 (never active) to class 0
    old = DefenceConfig(dormant_per_class=False, dormant_gate=False, **only)  # type: ignore[arg-type]
    for config, kept in ((DefenceConfig(**only), True), (old, False)):  # type: ignore[arg-type]
        strat = make_strategy(StrategySpec("robust-fedavg", min_nodes=8), root=root, defence=config)
        assert isinstance(strat, Defended)
        out, _ = _round(strat, (np.zeros((6, 4)), np.zeros(4)), rows)
        assert out is not None
        w = out["w"].numpy()
        assert w[5, 0] == 0.0  # the trigger never gets in
        assert bool(w[4, 2] == pytest.approx(0.25)) is kept, (config, w[4, 2])  # 2 of 8 devices push
