"""Agent federated pieces: bounded sample store, numpy trainer, DP ledger, gating, codec limits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.errors import IntegrityError, InvalidInputError
from agent.federated import trainer
from agent.federated.client import FederatedClient, FederatedConfig, StaticConditions, blocked_reason
from agent.federated.privacy import PrivacyLedger, clip_and_noise, epsilon, round_rdp
from agent.federated.store import SampleStore
from agent.federated.tensors import tensor_from_proto, tensor_to_proto
from agent.identity import Identity
from protos.edgeloop.v1 import federated_pb2 as pb


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_store_keeps_newest_within_count_and_age(tmp_path: Path) -> None:
    clock = Clock()
    store = SampleStore(tmp_path / "s.db", max_samples=5, max_age_s=100, clock=clock)
    store.add_many(np.zeros((4, 3)), np.arange(4))
    clock.now += 50
    assert store.add_many(np.ones((3, 3)), np.array([7, 8, 9])) == 5
    x, y = store.load()
    assert y.tolist() == [2, 3, 7, 8, 9] and x.shape == (5, 3)
    clock.now += 60  # the first batch is now older than 100 s
    assert store.load()[1].tolist() == [7, 8, 9]
    with pytest.raises(InvalidInputError):
        store.add_many(np.ones((1, 4)), np.array([1]))
    with pytest.raises(InvalidInputError):
        store.add_many(np.full((1, 3), np.nan), np.array([1]))


def test_trainer_learns_separable_data_and_prox_term_holds_it_back() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    y = (x[:, 0] > 0).astype(np.int64)
    w0 = [np.zeros((5, 2), np.float32), np.zeros(2, np.float32)]
    free, _ = trainer.train(w0, x, y, trainer.TrainParams(lr=0.5, epochs=5))
    prox, _ = trainer.train(
        w0, x, y, trainer.TrainParams(lr=0.5, epochs=5, proximal_mu=1.0)
    )  # stable while lr * mu < 2
    assert trainer.evaluate(free, x, y)[1] > 0.95 and free[0].dtype == np.float32
    assert np.linalg.norm(prox[0]) < np.linalg.norm(free[0])
    with pytest.raises(InvalidInputError):
        trainer.train([np.zeros((4, 2))], x, y, trainer.TrainParams())


def test_dp_clip_bounds_the_update_and_ledger_refuses_over_budget(tmp_path: Path) -> None:
    old = [np.zeros(100)]
    new = [np.full(100, 10.0)]
    out, norm = clip_and_noise(old, new, clip=1.0, noise_multiplier=0.0, rng=np.random.default_rng(0))
    assert norm == pytest.approx(100.0) and np.linalg.norm(out[0]) == pytest.approx(1.0)
    assert epsilon(round_rdp(1.0), 1e-5) > epsilon(round_rdp(4.0), 1e-5)
    ledger = PrivacyLedger(tmp_path / "l.json", budget_epsilon=3.0, delta=1e-5)
    spent = []
    while not ledger.would_exceed(4.0):
        spent.append(ledger.charge(4.0))
    assert spent and spent == sorted(spent) and spent[-1] <= 3.0
    again = PrivacyLedger(tmp_path / "l.json", budget_epsilon=3.0, delta=1e-5)  # survives restarts
    assert again.rounds == len(spent) and again.would_exceed(4.0)


def _client(tmp_path: Path, **cfg: object) -> FederatedClient:
    ident = Identity("dev", b"", b"", b"", "")
    return FederatedClient(identity=ident, endpoint="", data_dir=tmp_path, config=FederatedConfig(**cfg))  # type: ignore[arg-type]


def _task(sigma: float = 0.0) -> pb.TrainTask:
    task = pb.TrainTask(task_id="t", round_id="r:1", server_round=1, kind="train")
    task.arrays.extend(
        [tensor_to_proto("w", np.zeros((3, 2), np.float32)), tensor_to_proto("b", np.zeros(2, np.float32))]
    )
    task.config["dp-noise-multiplier"].number = sigma
    return task


def test_client_declines_when_not_allowed_or_budget_spent(tmp_path: Path) -> None:
    assert blocked_reason(FederatedConfig(), {"idle": 1, "charging": 0, "unmetered": 1}).endswith("charging")
    client = _client(tmp_path, epsilon_budget=2.0)
    assert client.handle(_task()).error == "no local training data"
    client.store.add_many(np.eye(3), np.array([0, 1, 0]))
    ok = client.handle(_task())
    assert not ok.error and ok.num_examples == 3 and [t.name for t in ok.arrays] == ["w", "b"]
    refused = client.handle(_task(sigma=0.5))  # one round at sigma 0.5 already exceeds eps 2
    assert refused.error.startswith("privacy budget exhausted")
    blocked = _client(tmp_path / "b")
    blocked._conditions = StaticConditions(idle=False)
    blocked.store.add_many(np.eye(3), np.array([0, 1, 0]))
    assert "idle" in blocked.handle(_task()).error


def test_tensor_codec_refuses_foreign_dtype_and_size_mismatch() -> None:
    t = tensor_to_proto("w", np.zeros(4, np.float32))
    assert tensor_from_proto(t, max_bytes=100).shape == (4,)
    with pytest.raises(IntegrityError):
        tensor_from_proto(pb.FlTensor(name="w", shape=[5], dtype="float32", data=t.data), max_bytes=100)
    with pytest.raises(IntegrityError):
        tensor_from_proto(pb.FlTensor(name="w", shape=[4], dtype="object", data=t.data), max_bytes=100)
    with pytest.raises(IntegrityError):
        tensor_from_proto(t, max_bytes=8)


def test_config_from_agent_toml_table() -> None:
    from agent.errors import ConfigError

    cfg = FederatedConfig.from_mapping({"require_charging": False, "epsilon_budget": 4, "max_samples": 100})
    assert cfg.epsilon_budget == 4.0 and not cfg.require_charging and cfg.max_samples == 100
    with pytest.raises(ConfigError):
        FederatedConfig.from_mapping({"epsilon": 1.0})
    with pytest.raises(ConfigError):
        FederatedConfig.from_mapping({"max_samples": "many"})
