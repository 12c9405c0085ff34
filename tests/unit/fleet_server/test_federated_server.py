"""Server federated pieces: anomaly scores and norm bounding, DP accounting, codec validation, cohort."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from sqlmodel import Session

from fleet_server.db import make_engine
from fleet_server.errors import InvalidRequestError
from fleet_server.federated.codec import ResultRejectedError, TensorSpec, check_arrays, check_metrics
from fleet_server.federated.cohort import CohortFilter, CohortSpec
from fleet_server.federated.privacy import epsilon_after
from fleet_server.federated.robust import anomaly_scores, bound_norms, score_replies, update_vectors
from fleet_server.federated.strategy import StrategySpec, make_strategy
from fleet_server.migrate import upgrade
from fleet_server.models import Device
from protos.edgeloop.v1 import federated_pb2 as pb


def _reply(w: np.ndarray) -> Message:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 0
    req = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=5, message_type="train")
    req.metadata.__dict__["_message_id"] = uuid.uuid4().hex
    content = RecordDict(
        {"arrays": ArrayRecord({"w": Array(w)}), "metrics": MetricRecord({"num-examples": 1})}
    )
    return Message(content, reply_to=req)


def test_sign_flipped_and_scaled_updates_score_highest_and_norm_bound_clips_them() -> None:
    rng = np.random.default_rng(0)
    g = ArrayRecord({"w": Array(np.zeros(50, np.float32))})
    honest = [np.ones(50, np.float32) + rng.normal(0, 0.1, 50).astype(np.float32) for _ in range(8)]
    replies = [_reply(u) for u in [*honest, -honest[0], 10 * honest[1]]]
    scores = anomaly_scores(update_vectors(g, replies))
    assert min(scores[8:]) > max(scores[:8])
    assert bound_norms(g, replies, bound=np.sqrt(50) * 1.5) == 1
    assert float(np.linalg.norm(replies[9].content["arrays"]["w"].numpy())) == pytest.approx(
        np.sqrt(50) * 1.5, rel=1e-5
    )


def test_scores_of_a_large_model_use_a_coordinate_sample_and_agree_with_the_exact_ones() -> None:
    """Above `coordinates` the median/cosine part looks at a fixed sample: same outliers, scores
    within a few thousandths of the exact ones, and the reply path keeps one full update at a time."""
    rng = np.random.default_rng(1)
    size = 200_000
    g = ArrayRecord({"w": Array(np.zeros(size, np.float32))})
    direction = rng.normal(0, 1, size).astype(np.float32)
    honest = [direction + rng.normal(0, 0.5, size).astype(np.float32) for _ in range(8)]
    updates = [*honest, -honest[0], 6 * honest[1]]
    exact = anomaly_scores([u.astype(np.float64) for u in updates], coordinates=size)
    sampled = score_replies(g, [_reply(u) for u in updates], coordinates=20_000)
    assert min(sampled[8:]) > max(sampled[:8]) and min(exact[8:]) > max(exact[:8])
    assert np.allclose(sampled, exact, atol=0.02), (sampled, exact)
    assert sampled == score_replies(g, [_reply(u) for u in updates], coordinates=20_000)  # same sample


def test_epsilon_grows_with_rounds_and_shrinks_with_noise() -> None:
    assert epsilon_after(0, 1.0, 1e-5) == 0.0
    assert epsilon_after(10, 2.0, 1e-5) > epsilon_after(5, 2.0, 1e-5) > epsilon_after(5, 4.0, 1e-5)


def test_check_arrays_rejects_nan_shape_names_and_magnitude() -> None:
    spec = [TensorSpec("w", (2, 2), "float32")]

    def res(name: str, values: np.ndarray) -> pb.TaskResult:
        return pb.TaskResult(
            arrays=[
                pb.FlTensor(
                    name=name, shape=list(values.shape), dtype=str(values.dtype), data=values.tobytes()
                )
            ]
        )

    good = np.ones((2, 2), np.float32)
    assert check_arrays(res("w", good), spec, max_bytes=100, max_abs=10)["w"].shape == (2, 2)
    for bad, reason in [
        (res("w", np.full((2, 2), np.inf, np.float32)), "non_finite"),
        (res("w", np.ones(4, np.float32)), "bad_shape"),
        (res("x", good), "bad_shape"),
        (res("w", good * 100), "out_of_range"),
        (res("w", np.ones((2, 2), np.int64)), "bad_dtype"),
        (res("w", np.ones((20, 20), np.float32)), "oversized"),
    ]:
        with pytest.raises(ResultRejectedError) as err:
            check_arrays(bad, spec, max_bytes=100, max_abs=10)
        assert err.value.reason == reason
    with pytest.raises(ResultRejectedError):
        check_metrics(pb.TaskResult(num_examples=0), max_examples=10)


def test_secure_aggregation_only_with_linear_strategies() -> None:
    assert type(make_strategy(StrategySpec("multikrum", min_nodes=10, malicious=2))).__name__ == "MultiKrum"
    with pytest.raises(InvalidRequestError):
        make_strategy(StrategySpec("nope"))


def test_cohort_filters_by_labels_profile_and_reported_conditions(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    upgrade(engine)
    with Session(engine) as s:
        s.add(Device(id="a", profile="pi4", labels={"site": "x"}))
        s.add(Device(id="b", profile="pi4", labels={"site": "y"}))
        s.add(Device(id="c", profile="jetson", labels={"site": "x"}))
        s.add(Device(id="d", profile="pi4", labels={"site": "x"}, status="revoked"))
        s.add(Device(id="e", profile="pi4", labels={"site": "x"}))
        s.commit()
    state = {"a": {"idle": 1.0}, "e": {"idle": 0.0}}
    spec = CohortSpec(labels={"site": "x"}, profile="pi4", require_conditions=("idle",))
    chosen = CohortFilter(engine=engine, spec=spec, conditions=lambda d: state.get(d, {}))
    assert chosen({"a", "b", "c", "d", "e"}) == {"a"}


def test_cohort_applies_the_drift_policy_hook(tmp_path: Path) -> None:
    from fleet_server.drift.analysis import CohortKey
    from fleet_server.drift.policy import EXCLUDE_DEVICES, OPEN_RETRAINING_ROUND, CohortAction

    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    upgrade(engine)
    with Session(engine) as s:
        for d in "abcde":
            s.add(Device(id=d, profile="pi4"))
        s.commit()
    cohort = CohortKey(profile="pi4", model_name="digits", model_version="1")
    actions = [
        CohortAction(cohort, OPEN_RETRAINING_ROUND, ("a", "b", "c"), ("d",), "shift"),
        CohortAction(cohort, EXCLUDE_DEVICES, (), ("b",), "anomaly"),
    ]

    def policy(session: Session) -> list[CohortAction]:
        return actions

    online = set("abcde")
    everyone = CohortFilter(engine=engine, spec=CohortSpec(), conditions=lambda d: {}, policy=policy)
    assert everyone(online) == {"a", "c", "e"}  # anomalous devices never train
    drifted = CohortFilter(
        engine=engine, spec=CohortSpec(drifted_only=True), conditions=lambda d: {}, policy=policy
    )
    assert drifted(online) == {"a", "c"}  # a drift-triggered run trains the shifted devices only


def test_cohort_cap_offers_a_fresh_sample_of_at_most_max_devices(tmp_path: Path) -> None:
    import random

    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    upgrade(engine)
    with Session(engine) as s:
        for d in "abcdefgh":
            s.add(Device(id=d, profile="pi4"))
        s.commit()
    spec = CohortSpec(use_drift_policy=False, max_devices=3)
    capped = CohortFilter(engine=engine, spec=spec, conditions=lambda d: {}, rng=random.Random(7))
    online = set("abcdefg")  # h is offline
    rounds = [capped(online) for _ in range(20)]
    assert all(len(r) == 3 and r <= online for r in rounds)
    assert len(set().union(*rounds)) == 7  # over rounds, every eligible device gets its turn
    assert capped({"a", "b"}) == {"a", "b"}  # fewer than the cap: all of them
