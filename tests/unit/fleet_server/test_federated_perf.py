"""The lean federated server path computes exactly what the straightforward one did.

Codec: tasks built from cached wire bytes are byte-identical to tasks built by appending the
tensor; Arrays built without np.save load back with np.load, and zero-copy views read what
`Array.numpy()` reads. Aggregation: `make_strategy` FedAvg / FedProx / FedAdam give Flower's own
result (same dtype, same values to float rounding) on replies with unequal weights, several keys
and dtypes. The bench harness still recovers the mean (plain) and the masked mean within its bound.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx, Strategy
from flwr.supercore.task_identity import TaskIdentity

from fleet_server.federated import codec
from fleet_server.federated.mean import InPlaceFedAvg
from fleet_server.federated.strategy import StrategySpec, make_strategy
from protos.edgeloop.v1 import federated_pb2 as pb


@pytest.fixture(autouse=True)
def _identity() -> None:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 0


ARRAYS = [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.float64(2.5) * np.ones((2, 1, 3)),
    np.array(7.0, dtype=np.float32),  # 0-d
    np.zeros((0, 5), np.float32),  # empty
    np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),
    np.arange(4, dtype=">f4"),  # big-endian input
    np.arange(5, dtype=np.int64),
]


@pytest.mark.parametrize("value", ARRAYS, ids=lambda a: f"{a.dtype.str}{a.shape}")
def test_npy_array_and_array_view_agree_with_flowers_own_encoding(value: np.ndarray) -> None:
    ours = codec.npy_array(value)
    flowers = Array(value)
    for array in (ours, flowers):
        assert np.array_equal(array.numpy(), value) and array.numpy().shape == value.shape
        view = codec.array_view(array)
        assert np.array_equal(view, value) and view.shape == value.shape
        assert not view.flags.writeable  # a view of the Array's bytes, not a copy
    assert (ours.dtype, ours.shape) == (flowers.dtype, flowers.shape)
    if value.dtype.kind == "f":  # the wire codec keeps shapes too (a 0-d tensor used to come back as (1,))
        back = codec.tensor_from_proto(codec.tensor_to_proto("x", value), max_bytes=1 << 20)
        assert np.array_equal(back, value) and back.shape == value.shape


def test_raw_array_is_viewed_without_a_copy_and_refused_by_flowers_numpy() -> None:
    data = np.arange(10, dtype="<u4").tobytes()
    array = codec.raw_array("uint32", (10,), data)
    view = codec.array_view(array)
    assert view.dtype == np.uint32 and list(view) == list(range(10)) and not view.flags.writeable
    with pytest.raises(TypeError):
        array.numpy()
    with pytest.raises(ValueError):
        codec.array_view(codec.raw_array("uint32", (11,), data))


def _train_message(arrays: ArrayRecord, node: int) -> Message:
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"lr": 0.1, "server-round": 3})})
    msg = Message(content, node, "train", group_id="r")
    msg.metadata.__dict__["_message_id"] = f"m{node}"
    return msg


def test_task_from_cached_wire_bytes_is_identical_to_appending_the_tensor() -> None:
    arrays = ArrayRecord({"w": Array(ARRAYS[0]), "b": Array(ARRAYS[1]), "be": Array(ARRAYS[5])})
    cache: codec.TensorCache = {}
    for node in (2, 3):
        msg = _train_message(arrays, node)
        task, specs = codec.message_to_task(msg, round_id="1:3", deadline_s=5.0, cache=cache)
        expected = pb.TrainTask(
            task_id=msg.metadata.message_id, round_id="1:3", server_round=3, kind="train", deadline_s=5.0
        )
        for name, array in arrays.items():
            expected.arrays.append(codec.tensor_to_proto(name, array.numpy()))
        for key, value in msg.content["config"].items():
            expected.config[key].CopyFrom(codec._config_value(value))
        assert task == expected
        assert [(s.name, s.shape, s.dtype) for s in specs] == [
            ("w", (3, 4), "float32"),
            ("b", (2, 1, 3), "float64"),
            ("be", (4,), ">f4"),
        ]
    assert len(cache) == 3  # each array serialized once for the batch


def _reply(request: Message, arrays: dict[str, np.ndarray], n: int) -> Message:
    content = RecordDict(
        {"arrays": ArrayRecord({k: codec.npy_array(v) for k, v in arrays.items()}),
         "metrics": MetricRecord({"num-examples": n, "train_loss": 1.0 / n})}
    )  # fmt: skip
    return Message(content, reply_to=request)


def _replies(dtype: type, count: int = 7) -> list[Message]:
    rng = np.random.default_rng(4)
    out = []
    for i in range(count):
        request = _train_message(ArrayRecord({"w": Array(np.zeros(3, np.float32))}), i + 2)
        # 70,001 words: several accumulator blocks plus a ragged tail
        big = rng.normal(0, 1, 70_001).astype(dtype)
        small = rng.normal(0, 1, (3, 2)).astype(dtype)
        out.append(_reply(request, {"big": big, "small": small, "count": np.arange(3) * i}, 10 + 13 * i))
    return out


FLOWER: dict[str, Callable[[], Strategy]] = {
    "fedavg": lambda: FedAvg(fraction_evaluate=0.0),
    "fedprox": lambda: FedProx(fraction_evaluate=0.0),
    "fedadam": lambda: FedAdam(fraction_evaluate=0.0, eta=0.1),  # keeps optimiser state: one per test
}


@pytest.mark.parametrize("name", sorted(FLOWER))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_in_place_mean_equals_flowers_aggregate(name: str, dtype: type) -> None:
    ours, flower = make_strategy(StrategySpec(name=name, min_nodes=2, server_lr=0.1)), FLOWER[name]()
    assert isinstance(ours, InPlaceFedAvg) and isinstance(ours, type(flower))
    if name == "fedadam":  # FedAdam needs the arrays it sent (its server optimiser steps from them)
        start = {k: np.zeros_like(a.numpy()) for k, a in _replies(dtype)[0].content["arrays"].items()}
        for strategy in (ours, flower):
            strategy.current_arrays = dict(start)  # type: ignore[attr-defined]
    got, got_metrics = ours.aggregate_train(1, _replies(dtype))
    want, want_metrics = flower.aggregate_train(1, _replies(dtype))
    assert got is not None and want is not None and set(got) == set(want) == {"big", "small", "count"}
    for key in want:
        g, w = got[key].numpy(), want[key].numpy()
        assert g.dtype == w.dtype and g.shape == w.shape, key
        np.testing.assert_allclose(g, w, rtol=1e-5 if g.dtype == np.float32 else 1e-12, atol=1e-6)
    assert got_metrics == want_metrics


def test_in_place_mean_is_the_weighted_mean_and_refuses_mismatched_sizes() -> None:
    replies = _replies(np.float64, count=3)
    got, _ = make_strategy(StrategySpec(name="fedavg", min_nodes=2)).aggregate_train(1, replies)
    assert got is not None
    weights = np.array([10, 23, 36], np.float64)
    stack = np.stack([m.content["arrays"]["big"].numpy() for m in replies])
    np.testing.assert_allclose(got["big"].numpy(), weights @ stack / weights.sum(), rtol=0, atol=1e-12)
    request = _train_message(ArrayRecord({"w": Array(np.zeros(3, np.float32))}), 9)
    odd = _reply(request, {"big": np.zeros(5), "small": np.zeros((3, 2)), "count": np.arange(3)}, 5)
    with pytest.raises(ValueError, match="big"):
        make_strategy(StrategySpec(name="fedavg", min_nodes=2)).aggregate_train(1, [*replies, odd])


@pytest.mark.parametrize("secure", [False, True])
def test_bench_harness_recovers_the_mean(secure: bool) -> None:
    from bench.federated import secagg_cost

    row = secagg_cost._one(20, 3_000, 0.1, secure, 0)
    bound = row["bound"] if secure else 1e-7
    assert 0 <= row["max_err"] <= bound + 1e-12
    assert row["server_s"] > 0 and row["upload_mb_per_device"] > 0.012
