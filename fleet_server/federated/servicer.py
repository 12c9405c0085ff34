"""`edgeloop.v1.FederatedService` handlers on the mutual-TLS device port.

`Tasks` attaches the authenticated device to this replica's `FleetGrid` and streams its tasks
(its own, or relayed from the runner replica); `PushResult` hands a result to the grid, which
validates it when this replica sent the task, else relays it to the runner replica and answers
`accepted` with reason "relayed" (the runner judges it; a refusal is counted there). Requests
arrive as raw bytes so a malformed message gets INVALID_ARGUMENT (the stock deserializer would
answer INTERNAL). The device id is the client certificate's CN, checked against the registry
exactly as the Sync servicer does (`DeviceServicer.authenticate`).

Owns the gRPC surface only; the grid owns round state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from fleet_server.federated.grid import FleetGrid
from fleet_server.grpc_api.auth import Authenticate
from protos.edgeloop.v1 import federated_pb2 as pb

logger = logging.getLogger(__name__)

SERVICE = "edgeloop.v1.FederatedService"


class FederatedServicer:
    """Serves FederatedService; `grid` is the single FleetGrid of this server process."""

    def __init__(self, *, grid: FleetGrid, authenticate: Authenticate) -> None:
        self.grid = grid
        self._authenticate = authenticate

    def handlers(self) -> grpc.GenericRpcHandler[Any, Any]:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Tasks": grpc.unary_stream_rpc_method_handler(
                    self.tasks, response_serializer=lambda m: m.SerializeToString()
                ),
                "PushResult": grpc.unary_unary_rpc_method_handler(
                    self.push_result, response_serializer=lambda m: m.SerializeToString()
                ),
            },
        )

    async def tasks(
        self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.TrainTask]:
        device_id = await self._authenticate(context)
        try:
            req = pb.TaskStreamRequest.FromString(raw)
        except DecodeError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed TaskStreamRequest: {err}")
        queue = self.grid.attach(device_id, dict(req.state))
        try:
            while True:
                task = await queue.get()
                if task is None:
                    return
                yield task
        finally:
            self.grid.detach(device_id, queue)

    async def push_result(
        self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PushResultResponse:
        device_id = await self._authenticate(context)
        try:
            result = pb.TaskResult.FromString(raw)
        except DecodeError as err:
            self.grid.rejected["malformed"] += 1
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed TaskResult: {err}")
        accepted, reason = await asyncio.to_thread(self.grid.forward_result, device_id, result)
        return pb.PushResultResponse(accepted=accepted, reason=reason)
