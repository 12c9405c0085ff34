"""The optional torch trainer: same contract and results as the numpy trainer, chosen by config, lazy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agent.errors import ConfigError, InvalidInputError
from agent.federated import train_torch, trainer
from agent.federated.client import FederatedClient, FederatedConfig, select_trainer
from agent.federated.tensors import tensor_from_proto, tensor_to_proto
from agent.identity import Identity, IdentityStore
from protos.edgeloop.v1 import federated_pb2 as pb
from tests.fixtures.heads import flat_digits

ROOT = Path(__file__).resolve().parents[3]
THREADS = 1  # the CPU path on a shared 2-core machine; torch's default spins on busy cores


def _zeros(d: int = 64, k: int = 10) -> list[np.ndarray]:
    return [np.zeros((d, k), np.float32), np.zeros(k, np.float32)]


def test_torch_head_matches_numpy_head_on_digits() -> None:
    x_tr, y_tr, x_te, y_te = flat_digits(0)
    x_tr, y_tr = x_tr[:1000], y_tr[:1000]
    params = trainer.TrainParams(lr=0.5, epochs=5, batch_size=32, seed=7)
    ref, ref_loss = trainer.train(_zeros(), x_tr, y_tr, params)
    got, loss = train_torch.train(_zeros(), x_tr, y_tr, params, threads=THREADS)
    ref_acc, acc = trainer.evaluate(ref, x_te, y_te)[1], trainer.evaluate(got, x_te, y_te)[1]
    assert acc > 0.9 and abs(acc - ref_acc) <= 0.01, (acc, ref_acc)
    assert [a.dtype for a in got] == [np.float32, np.float32] and got[0].shape == (64, 10)
    assert loss == pytest.approx(ref_loss, rel=1e-4)  # same minibatch order, float32 vs float64
    np.testing.assert_allclose(got[0], ref[0], atol=1e-4)
    as64, _ = train_torch.train([a.astype(np.float64) for a in _zeros()], x_tr, y_tr, params, threads=THREADS)
    assert as64[0].dtype == np.float64  # dtypes come back as they went in


def test_fedprox_term_pulls_weights_toward_the_start() -> None:
    x_tr, y_tr, _, _ = flat_digits(0)
    rng = np.random.default_rng(1)
    start = [rng.normal(scale=0.1, size=(64, 10)).astype(np.float32), np.zeros(10, np.float32)]

    def drift(mu: float) -> float:
        params = trainer.TrainParams(lr=0.5, epochs=3, proximal_mu=mu)
        new, _ = train_torch.train(start, x_tr[:500], y_tr[:500], params, threads=THREADS)
        ref, _ = trainer.train(start, x_tr[:500], y_tr[:500], params)
        np.testing.assert_allclose(new[0], ref[0], atol=1e-4)  # same prox semantics as numpy
        return float(np.linalg.norm(new[0] - start[0]))

    free, held = drift(0.0), drift(1.0)  # stable while lr * mu < 2
    assert held < 0.5 * free, (held, free)


@pytest.mark.parametrize(
    ("weights", "x", "y"),
    [
        pytest.param([np.zeros((4, 2))], np.zeros((3, 4)), np.zeros(3, np.int64), id="missing-bias"),
        pytest.param(_zeros(4, 2), np.zeros((3, 5)), np.zeros(3, np.int64), id="feature-width"),
        pytest.param([np.zeros((4, 2)), np.zeros(3)], np.zeros((3, 4)), np.zeros(3, np.int64), id="bias"),
        pytest.param(_zeros(4, 2), np.zeros(4), np.zeros(1, np.int64), id="flat-features"),
        pytest.param(_zeros(4, 2), np.zeros((3, 4)), np.zeros(2, np.int64), id="label-count"),
        pytest.param(_zeros(4, 2), np.zeros((3, 4)), np.array([0, 1, 2]), id="label-range"),
    ],
)
def test_bad_shapes_raise_invalid_input(weights: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> None:
    with pytest.raises(InvalidInputError):
        train_torch.train(weights, x, y, trainer.TrainParams())


def test_config_selects_and_validates_the_trainer(monkeypatch: pytest.MonkeyPatch) -> None:
    assert FederatedConfig.from_mapping({}).trainer == "numpy"
    assert select_trainer(FederatedConfig()) is trainer.train
    cfg = FederatedConfig.from_mapping({"trainer": "torch", "torch_threads": 2})
    assert (cfg.trainer, cfg.torch_threads) == ("torch", 2)
    for bad in ({"trainer": "tensorflow"}, {"trainer": 1}, {"torch_threads": -1}):
        with pytest.raises(ConfigError):
            FederatedConfig.from_mapping(bad)
    monkeypatch.setitem(sys.modules, "torch", None)  # as on a device without the `train` extra
    with pytest.raises(ConfigError, match=r"pip install edgeloop\[agent,train\]"):
        FederatedConfig.from_mapping({"trainer": "torch"})
    with pytest.raises(ConfigError, match="train extra"):
        train_torch.train(_zeros(4, 2), np.zeros((3, 4)), np.zeros(3, np.int64), trainer.TrainParams())


def test_client_trains_a_task_with_the_torch_trainer(tmp_path: Path) -> None:
    x_tr, y_tr, _, _ = flat_digits(0)
    config = FederatedConfig(trainer="torch", torch_threads=THREADS)
    client = FederatedClient(
        identity=Identity("dev", b"", b"", b"", ""), endpoint="", data_dir=tmp_path, config=config
    )
    client.store.add_many(x_tr[:200], y_tr[:200])
    task = pb.TrainTask(task_id="t", round_id="r:1", server_round=1, kind="train")
    task.arrays.extend(tensor_to_proto(n, a) for n, a in zip(("w", "b"), _zeros(), strict=True))
    task.config["lr"].number = 0.5
    result = client.handle(task)
    assert not result.error and result.num_examples == 200 and result.metrics["train_loss"] > 0
    w = tensor_from_proto(result.arrays[0], max_bytes=2**20)
    assert w.dtype == np.float32 and np.abs(w).sum() > 0


def test_importing_the_federated_client_does_not_load_torch() -> None:
    code = (
        "import sys, json, agent.federated.client as c;"
        "c.FederatedConfig.from_mapping({'trainer': 'torch'});"
        "c.select_trainer(c.FederatedConfig(trainer='torch'));"
        "print(json.dumps('torch' in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert json.loads(out.stdout) is False


def test_daemon_refuses_to_start_with_torch_trainer_but_no_torch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent.config import AgentConfig, DeviceConfig
    from agent.daemon import _build_federated

    config = AgentConfig(device=DeviceConfig(data_dir=str(tmp_path)), federated={"trainer": "torch"})
    identity = Identity("dev", b"", b"", b"", "")
    client = _build_federated(config, IdentityStore(tmp_path), identity, "localhost:1", None)
    assert client is not None and client.config.trainer == "torch"
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ConfigError, match="train extra"):  # the CLI exits with ExitCode.CONFIG
        _build_federated(config, IdentityStore(tmp_path), identity, "localhost:1", None)


@pytest.mark.parametrize(
    "bad",
    [
        {"lr": 0.0},
        {"lr": float("nan")},
        {"epochs": 0},
        {"epochs": 10**6},
        {"batch_size": 0},
        {"proximal_mu": -1.0},
    ],
)
def test_unusable_task_config_is_refused_not_crashed(bad: dict[str, float]) -> None:
    from agent.errors import InvalidInputError
    from agent.federated.trainer import TrainParams

    with pytest.raises(InvalidInputError, match="bad training config"):
        TrainParams(**bad)  # type: ignore[arg-type]
