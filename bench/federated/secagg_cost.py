"""SecAgg+ cost vs plain FedAvg in one harness: N devices, P parameters, a fraction dropping.

`DirectGrid` is an in-process Flower `Grid`: every message is encoded to our protobuf task (as on
the wire), handled by the device-side code (agent.federated.secagg.SecAggClient, or a plain
"model + delta" result), and decoded by the server codec, so serialization is counted on both
sides. Client time is measured separately; "server" = wall - client. Devices run sequentially.
`server_cpu_s` is the same difference in this process's CPU time (`time.process_time`): on a box
shared with other work it moves much less than the wall-clock figure. It counts every thread
of the process, so the server's mask-expansion threads are in it (they run only while the
server works, never during a device's timed call).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from agent.federated.secagg import SecAggClient
from agent.federated.tensors import blob, config_from_proto, num, tensor_from_proto, tensor_to_proto
from fleet_server.federated.codec import (
    check_arrays,
    check_metrics,
    message_to_task,
    reply_message,
    secagg_reply,
)
from fleet_server.federated.secagg import SecAggParams, SecAggRound
from fleet_server.federated.strategy import StrategySpec, make_strategy
from protos.edgeloop.v1 import federated_pb2 as pb

MAX = 2**31


class InProcGrid(Grid):
    """Flower's `Grid` for one process: every node id is a simulated device holding one update.
    Subclasses deliver the messages (`send_and_receive`); the rest is shared boilerplate."""

    def __init__(self, deltas: dict[int, np.ndarray], dead: set[int]) -> None:
        self.deltas, self.dead = deltas, dead
        self.client_s, self.client_cpu, self.upload = 0.0, 0.0, dict.fromkeys(deltas, 0)
        self._run = Run.create_empty(1)

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.deltas)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError


class DirectGrid(InProcGrid):
    def __init__(self, deltas: dict[int, np.ndarray], dead: set[int]) -> None:
        super().__init__(deltas, dead)
        self.clients = {n: SecAggClient() for n in deltas}

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        out, cache = [], {}  # type: ignore[var-annotated]
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            node = msg.metadata.dst_node_id
            task, specs = message_to_task(
                msg, round_id=msg.metadata.group_id or "1:1", deadline_s=0, cache=cache
            )
            if node in self.dead and task.kind == "train.secagg_masked":
                continue
            raw = task.SerializeToString()
            t0, c0 = time.perf_counter(), time.process_time()
            result = self._device(node, pb.TrainTask.FromString(raw)).SerializeToString()
            self.client_s += time.perf_counter() - t0
            self.client_cpu += time.process_time() - c0
            self.upload[node] += len(result)
            res = pb.TaskResult.FromString(result)
            if task.kind.startswith("train.secagg_"):
                out.append(secagg_reply(msg, res, max_bytes=MAX))
            else:
                arrays = check_arrays(res, specs, max_bytes=MAX, max_abs=1e6)
                out.append(
                    reply_message(
                        msg,
                        arrays_key="arrays",
                        arrays=arrays,
                        metrics=check_metrics(res, max_examples=10**6),
                    )
                )
        return out

    def _device(self, node: int, task: pb.TrainTask) -> pb.TaskResult:
        cfg = config_from_proto(dict(task.config))
        res = pb.TaskResult(task_id=task.task_id, round_id=task.round_id)
        sa, rid = self.clients[node], task.round_id
        if task.kind == "train":
            w = tensor_from_proto(task.arrays[0], max_bytes=MAX)
            res.arrays.append(tensor_to_proto(task.arrays[0].name, w + self.deltas[node].reshape(w.shape)))
            res.num_examples = 50
        elif task.kind == "train.secagg_keys":
            res.blobs.update(sa.keys(rid))
        elif task.kind == "train.secagg_share":
            res.blobs.update(sa.share(rid, blob(cfg, "roster")))
        elif task.kind == "train.secagg_masked":
            tensor_from_proto(task.arrays[0], max_bytes=MAX)  # the device decodes the model it trains
            vec, blobs, n, _ = sa.masked(
                rid,
                blob(cfg, "inbox"),
                lambda: ([self.deltas[node]], 50, {}),
                clip=num(cfg, "secagg-clip", 1),
                scale=num(cfg, "secagg-scale", 1),
                max_examples=int(num(cfg, "secagg-max-examples", 1000)),
            )
            res.arrays.append(tensor_to_proto("masked", vec))
            res.blobs.update(blobs)
            res.num_examples = n
        elif task.kind == "train.secagg_unmask":
            res.blobs.update(sa.unmask(rid, blob(cfg, "lists")))
        return res


def _one(
    n: int, params: int, drop: float, secure: bool, seed: int, mask_threads: int = 0
) -> dict[str, float]:
    """One round; `mask_threads` as in `SecAggParams` (0: one per core, at most 4)."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 0
    rng = np.random.default_rng(seed)
    deltas = {i + 2: rng.normal(0, 0.01, params).astype(np.float32) for i in range(n)}
    dead = set(list(deltas)[: int(n * drop)]) if secure else set()
    grid = DirectGrid(deltas, dead)
    g = ArrayRecord({"w": Array(np.zeros(params, np.float32))})
    strat = make_strategy(StrategySpec(name="fedavg", min_nodes=n))  # the runner's own FedAvg
    t0, c0 = time.perf_counter(), time.process_time()
    msgs = list(strat.configure_train(1, g, ConfigRecord({}), grid))
    if secure:
        out = SecAggRound(
            grid, SecAggParams(clip=0.1, max_examples=100, max_clients=n, mask_threads=mask_threads), "1:1"
        ).run(msgs)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert out.mean_delta is not None
        got, bound = out.mean_delta, out.error_bound
    else:
        res, _ = strat.aggregate_train(1, grid.send_and_receive(msgs))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert res is not None
        got, bound = res["w"].numpy(), 0.0
    # the check against the exact mean is not server work: outside the timed region, as in flower_secagg
    alive = [d for k, d in deltas.items() if k not in dead]
    err = float(np.max(np.abs(got - np.mean(np.asarray(alive, np.float64), axis=0))))
    return {
        "wall_s": wall,
        "client_s_per_device": grid.client_s / n,
        "server_s": wall - grid.client_s,
        "server_cpu_s": cpu - grid.client_cpu,
        "upload_mb_per_device": float(np.mean([b for k, b in grid.upload.items() if k not in dead])) / 1e6,
        "max_err": err,
        "bound": bound,
    }
