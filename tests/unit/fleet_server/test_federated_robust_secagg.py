"""Robustness with secure aggregation on: what still applies when the server sees only the sum.

Real FleetGrid, the real FederatedRunner with SecAgg+ and eight in-process agents
(FederatedClient.handle, the code devices run); two of them train and then send their update
reversed and boosted x20 (its own agent code otherwise: a device fed poisoned data, not a
rewritten agent). The server holds a root set for the model (StaticRootData, the registry's
evaluation set in production). A round whose sum makes the model worse on the root set is
rejected and the model stays (aggregate validation needs only the sum); with
device-side norm enforcement (`clipping_norm` in the train config, applied by the agent before
masking) the attackers are bounded and the rounds are accepted. Per-update rules are refused.
Three 3-round runs against the same fleet: no root set (the poisoned sums are taken), root set
(some rounds rejected, the model never ends worse than it started), root set + clipping.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from sqlmodel import Session, select

from agent.federated import trainer
from agent.federated.client import FederatedClient, FederatedConfig
from agent.identity import Identity
from fleet_server.db import make_engine
from fleet_server.errors import InvalidRequestError
from fleet_server.federated.defences.head import HeadOracle
from fleet_server.federated.grid import FleetGrid
from fleet_server.federated.models import FlRound
from fleet_server.federated.robust import _flat
from fleet_server.federated.rootdata import RootSet, StaticRootData
from fleet_server.federated.runner import FederatedRunner, RunSpec
from fleet_server.federated.strategy import StrategySpec
from fleet_server.migrate import upgrade
from tests.unit.fleet_server.test_federated_secagg import loop

__all__ = ["loop"]
ATTACKERS = {"d05", "d06"}


def _data(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    x = rng.random((n, 16)).astype(np.float32)
    return x, x[:, :4].argmax(axis=1)


def _boosted_flip(
    weights: list[np.ndarray], x: np.ndarray, y: np.ndarray, params: trainer.TrainParams
) -> tuple[list[np.ndarray], float]:
    new, loss = trainer.train(weights, x, y, params)
    out = [(w - 20.0 * (n.astype(np.float64) - w)).astype(w.dtype) for w, n in zip(weights, new, strict=True)]
    return out, loss


@pytest.fixture
def fleet(loop: asyncio.AbstractEventLoop, tmp_path: Path) -> FleetGrid:
    grid = FleetGrid(loop=loop)
    rng = np.random.default_rng(0)
    for i in range(8):
        did = f"d{i:02d}"
        cfg = FederatedConfig(require_idle=False, require_charging=False, require_unmetered=False)
        client = FederatedClient(
            identity=Identity(did, b"", b"", b"", ""), endpoint="", data_dir=tmp_path / did, config=cfg
        )
        client.store.add_many(*_data(rng, 40))
        if did in ATTACKERS:
            client._train_fn = _boosted_flip

        async def device(did: str = did, client: FederatedClient = client) -> None:
            queue = grid.attach(did, {})
            while (task := await queue.get()) is not None:
                result = await asyncio.to_thread(client.handle, task)
                await asyncio.to_thread(grid.accept_result, did, result)

        asyncio.run_coroutine_threadsafe(device(), loop)
    while len(list(grid.get_node_ids())) < 8:
        threading.Event().wait(0.01)
    return grid


def _runner(grid: FleetGrid, tmp: Path, root: RootSet) -> FederatedRunner:
    engine = make_engine(f"sqlite:///{tmp / 'fl.sqlite'}")
    upgrade(engine)
    runner = FederatedRunner(engine=engine, grid=grid, out_dir=tmp / "out")
    runner.root_data = StaticRootData(root)
    return runner


def _initial() -> ArrayRecord:
    return ArrayRecord({"w": Array(np.zeros((16, 4), np.float32)), "b": Array(np.zeros(4, np.float32))})


def _rounds(runner: FederatedRunner, run_id: str) -> list[FlRound]:
    with Session(runner._engine) as s:
        q = select(FlRound).where(FlRound.run_id == run_id).order_by(FlRound.server_round)  # type: ignore[arg-type]
        return list(s.exec(q).all())


def test_with_secagg_validation_rejects_a_poisoned_sum_and_device_clipping_bounds_it(
    fleet: FleetGrid, tmp_path: Path
) -> None:
    root = RootSet(*_data(np.random.default_rng(1), 80))
    oracle = HeadOracle(root, 16, 4)
    start = oracle.loss_acc(_flat(_initial()))[0]
    runner = _runner(fleet, tmp_path, root)
    config: dict[str, float | int | str] = {"lr": 0.5, "local-epochs": 3, "batch-size": 16}
    spec = RunSpec(
        StrategySpec("fedavg", min_nodes=8), num_rounds=3, round_timeout_s=60, secure_aggregation=True,
        train_config=config, model="digits-head",
    )  # fmt: skip

    runner.root_data = None  # no server-held data: the poisoned sums are taken
    runner.run_blocking(spec, _initial())
    assert runner.result is not None
    poisoned = oracle.loss_acc(_flat(runner.result))[0]
    assert poisoned > start + 0.5

    runner.root_data = StaticRootData(root)  # validation of the aggregate, SecAgg unchanged
    rounds = _rounds(runner, runner.run_blocking(spec, _initial()))
    assert [r.metrics["secagg-survivors"] for r in rounds] == [8.0] * 3  # all 8 masked updates summed
    assert sum(r.metrics["robust-rejected"] for r in rounds) >= 1
    assert runner.result is not None
    validated = oracle.loss_acc(_flat(runner.result))[0]
    assert validated <= start * 1.1 + 0.02 and validated < poisoned - 0.5

    clipped = replace(spec, train_config={**config, "clipping_norm": 0.5})  # enforced by the agent
    rounds = _rounds(runner, runner.run_blocking(clipped, _initial()))
    assert [r.metrics["robust-rejected"] for r in rounds] == [0.0] * 3
    assert runner.result is not None
    assert oracle.loss_acc(_flat(runner.result))[0] < start - 0.02


def test_per_update_rules_are_refused_with_secagg_naming_what_applies(tmp_path: Path) -> None:
    spec = RunSpec(StrategySpec("robust-fedavg", min_nodes=4), secure_aggregation=True)
    with pytest.raises(InvalidRequestError, match="clipping_norm") as err:
        FederatedRunner.validate(spec)
    assert "validation of the aggregate" in str(err.value) and "DP noise" in str(err.value)
