"""SecAgg+ through the real FleetGrid with in-process devices (the agent's FederatedClient.handle):
sum equals the plain weighted mean within the stated bound under 10% dropouts; a single update
cannot be recovered from the server's transcript; tampered or replayed uploads are rejected."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from flwr.serverapp.strategy import FedAvg

from agent.errors import IntegrityError
from agent.federated import trainer
from agent.federated.client import FederatedClient, FederatedConfig
from agent.federated.secagg import SecAggClient
from agent.identity import Identity
from fleet_server.federated import secagg_crypto as sc
from fleet_server.federated.grid import FleetGrid
from fleet_server.federated.secagg import SecAggParams, SecAggRound
from protos.edgeloop.v1 import federated_pb2 as pb

Hook = Callable[[str, pb.TrainTask, pb.TaskResult], pb.TaskResult | None]


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    th = threading.Thread(target=lp.run_forever, daemon=True)
    th.start()
    yield lp

    async def cancel_devices() -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run_coroutine_threadsafe(cancel_devices(), lp).result(10)
    lp.call_soon_threadsafe(lp.stop)
    th.join(5)


class InProcFleet:
    """Devices as FederatedClients fed by FleetGrid queues; `hook` may drop (None) or alter results."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        tmp: Path,
        n: int,
        hook: Hook | None = None,
        slow: dict[str, float] | None = None,
    ) -> None:
        self.grid = FleetGrid(loop=loop)
        self.loop, self.hook, self.slow = loop, hook, slow or {}
        self.late: list[tuple[bool, str]] = []
        rng = np.random.default_rng(0)
        self.clients: dict[str, FederatedClient] = {}
        for i in range(n):
            did = f"d{i:02d}"
            cfg = FederatedConfig(require_idle=False, require_charging=False, require_unmetered=False)
            client = FederatedClient(
                identity=Identity(did, b"", b"", b"", ""), endpoint="", data_dir=tmp / did, config=cfg
            )
            x = rng.random((int(rng.integers(20, 60)), 16)).astype(np.float32)
            client.store.add_many(x, (x[:, :4].argmax(axis=1) + i) % 4)
            self.clients[did] = client
            asyncio.run_coroutine_threadsafe(self._device(did), loop)
        while len(list(self.grid.get_node_ids())) < n:
            threading.Event().wait(0.01)

    async def _device(self, did: str) -> None:
        queue = self.grid.attach(did, {})
        while (task := await queue.get()) is not None:
            result = await asyncio.to_thread(self.clients[did].handle, task)
            if self.hook is not None and (result := self.hook(did, task, result)) is None:
                self.grid.detach(did, queue)
                return
            if did in self.slow:
                await asyncio.sleep(self.slow[did])
                self.late.append(await asyncio.to_thread(self.grid.accept_result, did, result))
                continue
            await asyncio.to_thread(self.grid.accept_result, did, result)


def model() -> ArrayRecord:
    return ArrayRecord({"w": Array(np.zeros((16, 4), np.float32)), "b": Array(np.zeros(4, np.float32))})


def train_messages(grid: FleetGrid) -> list[Message]:
    strategy = FedAvg(min_train_nodes=2, min_available_nodes=2)
    return list(strategy.configure_train(1, model(), ConfigRecord({"lr": 0.5, "local-epochs": 1}), grid))


def expected_mean(fleet: InProcFleet, survivors: set[str], max_examples: int) -> np.ndarray:
    total, weight = 0.0, 0
    for did in sorted(survivors):
        x, y = fleet.clients[did].store.load()
        new, _ = trainer.train(
            [np.zeros((16, 4), np.float32), np.zeros(4, np.float32)],
            x,
            y,
            trainer.TrainParams(lr=0.5, seed=1),
        )
        n = min(len(y), max_examples)
        total = total + n * np.concatenate([a.ravel().astype(np.float64) for a in new])
        weight += n
    return np.asarray(total) / weight


def drop_at_masked(victims: set[str]) -> Hook:
    return lambda did, task, res: None if did in victims and task.kind == "train.secagg_masked" else res


def test_sum_equals_plain_mean_within_bound_with_10pct_dropouts(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    victims = {"d03", "d11"}
    fleet = InProcFleet(loop, tmp_path, 20, drop_at_masked(victims))
    params = SecAggParams(clip=2.0, max_examples=50, max_clients=100)
    out = SecAggRound(fleet.grid, params, "1:1").run(train_messages(fleet.grid))
    assert len(out.survivors) == 18 and len(out.dropped) == 2
    assert out.mean_delta is not None and out.total_examples == sum(
        min(len(c.store.load()[1]), 50) for d, c in fleet.clients.items() if d not in victims
    )
    err = float(np.max(np.abs(out.mean_delta - expected_mean(fleet, set(fleet.clients) - victims, 50))))
    assert err <= out.error_bound + 1e-12, (err, out.error_bound)
    assert 0 < out.error_bound < 1e-4


def test_single_update_not_recoverable_from_server_transcript(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    fleet = InProcFleet(loop, tmp_path, 10, drop_at_masked({"d05"}))
    params = SecAggParams(clip=2.0, max_examples=50, max_clients=100)
    rnd = SecAggRound(fleet.grid, params, "1:1")
    out = rnd.run(train_messages(fleet.grid))
    t = out.transcript
    assert set(t.dropped_mask_keys) == set(out.dropped) and not set(t.dropped_mask_keys) & set(out.survivors)
    scale = params.scale
    for i in out.survivors:  # strip everything the server can strip: the self mask
        guess = sc.decode_fixed(t.masked[i] - sc.prg(t.self_mask_seeds[i], len(t.masked[i])), scale=scale)[
            :-1
        ]
        did = sorted(fleet.clients)[i - 1]
        truth = expected_mean(fleet, {did}, 50) * min(len(fleet.clients[did].store.load()[1]), 50)
        assert float(np.max(np.abs(guess - truth))) > 1e3 * float(np.max(np.abs(truth)))
        assert abs(float(np.corrcoef(guess, truth)[0, 1])) < 0.5


def test_tampered_and_replayed_masked_updates_rejected(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    stash: dict[str, pb.TaskResult] = {}

    def hook(did: str, task: pb.TrainTask, res: pb.TaskResult) -> pb.TaskResult:
        if task.kind != "train.secagg_masked":
            return res
        if task.round_id == "1:1":
            stash[did] = pb.TaskResult.FromString(res.SerializeToString())
        if did == "d02":
            vec = np.frombuffer(res.arrays[0].data, np.uint32).copy()
            vec[0] ^= 1
            res.arrays[0].data = vec.tobytes()
        if did == "d04" and task.round_id == "1:2":  # replay last round's upload into this round
            old = stash["d04"]
            res.arrays[0].data, res.blobs["mac"] = old.arrays[0].data, old.blobs["mac"]
        return res

    fleet = InProcFleet(loop, tmp_path, 10, hook)
    params = SecAggParams(clip=2.0, max_examples=50, max_clients=100)
    first = SecAggRound(fleet.grid, params, "1:1").run(train_messages(fleet.grid))
    second = SecAggRound(fleet.grid, params, "1:2").run(train_messages(fleet.grid))
    assert first.rejected["bad_mac"] == 1 and second.rejected["bad_mac"] == 2
    assert second.mean_delta is not None
    honest = set(fleet.clients) - {"d02", "d04"}
    err = float(np.max(np.abs(second.mean_delta - expected_mean(fleet, honest, 50))))
    assert err <= second.error_bound + 1e-12


def test_client_refuses_inconsistent_unmask() -> None:
    client = SecAggClient()
    client.keys("r")
    session = client.sessions["r"]
    session.index, session.threshold = 1, 2
    with pytest.raises(IntegrityError):
        client.unmask("r", b'{"survivors": [1, 2, 3], "dropped": [3]}')
    with pytest.raises(IntegrityError):
        client.unmask("r", b'{"survivors": [1], "dropped": []}')
