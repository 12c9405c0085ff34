"""Anchor: Flower 1.42's own SecAgg+ (legacy `SecAggPlusWorkflow` + `secaggplus_mod`) in our harness.

Same shape as `secagg_cost.DirectGrid`: an in-process Flower `Grid` whose `send_and_receive`
serializes every message to Flower's wire protobuf (`flwr.common.serde`), runs the device side
(a legacy `ClientApp(client_fn, mods=[secaggplus_mod])` around a `NumPyClient` whose `fit`
returns `w + delta`, one persistent `Context` per node, as a SuperNode keeps it) and decodes the
reply, so serialization is counted on both sides. Devices run sequentially; client time is
measured separately and "server" = wall - client. Devices in `dead` skip the masked-vector
stage (dropped after key sharing), as in `secagg_cost`. Plain = Flower's legacy FedAvg fit
round (`default_fit_workflow`) on the same harness. Flower code is called, not copied.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.compat.common.recorddict_compat import parameters_to_arrayrecord
from flwr.proto.message_pb2 import Message as ProtoMessage  # type: ignore[attr-defined]
from flwr.server import ServerConfig
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.default_workflows import default_fit_workflow
from flwr.supercore.task_identity import TaskIdentity

from bench.federated.secagg_cost import InProcGrid


class _Device(NumPyClient):
    def __init__(self, delta: np.ndarray) -> None:
        self.delta = delta

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict]:  # type: ignore[type-arg,override]
        return [parameters[0] + self.delta], 50, {}


class FlowerDirectGrid(InProcGrid):
    def __init__(self, deltas: dict[int, np.ndarray], dead: set[int], secure: bool) -> None:
        super().__init__(deltas, dead)
        mods = [secaggplus_mod] if secure else []
        self.app = ClientApp(client_fn=lambda ctx: _Device(deltas[ctx.node_id]).to_client(), mods=mods)
        self.contexts = {n: Context(1, n, {}, RecordDict(), {}) for n in deltas}

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        out = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            node = msg.metadata.dst_node_id
            stage = msg.content.config_records.get(RECORD_KEY_CONFIGS, ConfigRecord()).get(Key.STAGE)
            if node in self.dead and stage == Stage.COLLECT_MASKED_VECTORS:
                continue
            raw = message_to_proto(msg).SerializeToString()
            t0, c0 = time.perf_counter(), time.process_time()
            request = message_from_proto(ProtoMessage.FromString(raw))
            reply = self.app(request, self.contexts[node])
            reply.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            result = message_to_proto(reply).SerializeToString()
            self.client_s += time.perf_counter() - t0
            self.client_cpu += time.process_time() - c0
            self.upload[node] += len(result)
            out.append(message_from_proto(ProtoMessage.FromString(result)))
        return out


def _one(n: int, params: int, drop: float, secure: bool, seed: int) -> dict[str, float]:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 0
    rng = np.random.default_rng(seed)
    deltas = {i + 2: rng.normal(0, 0.01, params).astype(np.float32) for i in range(n)}
    dead = set(list(deltas)[: int(n * drop)]) if secure else set()
    grid = FlowerDirectGrid(deltas, dead, secure)
    strategy = LegacyFedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=n,
        min_available_clients=n,
        initial_parameters=ndarrays_to_parameters([np.zeros(params, np.float32)]),
    )
    ctx = LegacyContext(Context(1, 0, {}, RecordDict(), {}), ServerConfig(num_rounds=1), strategy)
    for node in deltas:
        ctx.client_manager.register(GridClientProxy(node, grid, 1))
    ctx.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: 1})
    init = strategy.initialize_parameters(ctx.client_manager)
    assert init is not None
    ctx.state.array_records[MAIN_PARAMS_RECORD] = parameters_to_arrayrecord(init, keep_input=True)
    # 14 neighbours + itself, threshold 8: the same graph degree and threshold as ours at N=100
    workflow = SecAggPlusWorkflow(
        num_shares=15, reconstruction_threshold=8, max_weight=100, clipping_range=0.1
    )
    t0, c0 = time.perf_counter(), time.process_time()
    if secure:
        workflow(grid, ctx)
    else:
        default_fit_workflow(grid, ctx)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    got = ctx.state.array_records[MAIN_PARAMS_RECORD].to_numpy_ndarrays()[0].astype(np.float64)
    alive = [d for k, d in deltas.items() if k not in dead]
    err = float(np.max(np.abs(got - np.mean(np.asarray(alive, np.float64), axis=0))))
    return {
        "wall_s": wall,
        "client_s_per_device": grid.client_s / n,
        "server_s": wall - grid.client_s,
        "server_cpu_s": cpu - grid.client_cpu,
        "upload_mb_per_device": float(np.mean([b for k, b in grid.upload.items() if k not in dead])) / 1e6,
        "max_err": err,
    }
