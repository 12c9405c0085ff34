"""gRPC adapter for `edgeloop.v1.FederatedService` over the device's mutual-TLS identity.

Translates every grpc error into the AgentError tree here; nothing above sees `grpc.RpcError`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from agent.errors import TransportError
from agent.identity import Identity
from agent.transport.grpc_fleet import SessionRejectedError
from protos.edgeloop.v1 import federated_pb2 as pb

logger = logging.getLogger(__name__)

_FATAL = {
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.INVALID_ARGUMENT,
}


def _translate(err: grpc.aio.AioRpcError) -> TransportError:
    if err.code() in _FATAL:
        return SessionRejectedError(f"federated service refused ({err.code().name}): {err.details()}")
    return TransportError(f"federated stream failed ({err.code().name}): {err.details()}")


class GrpcFederatedLink:
    """One channel: a task stream in, unary results out."""

    def __init__(
        self, *, identity: Identity, endpoint: str, server_name: str = "", max_task_bytes: int
    ) -> None:
        creds = grpc.ssl_channel_credentials(
            root_certificates=identity.ca_pem,
            private_key=identity.key_pem,
            certificate_chain=identity.cert_chain_pem,
        )
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", max_task_bytes),
            ("grpc.max_send_message_length", max_task_bytes),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.use_local_subchannel_pool", 1),
        ]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        self._channel = grpc.aio.secure_channel(endpoint, creds, options=options)
        self._tasks = self._channel.unary_stream(
            "/edgeloop.v1.FederatedService/Tasks",
            request_serializer=pb.TaskStreamRequest.SerializeToString,
            response_deserializer=pb.TrainTask.FromString,
        )
        self._push = self._channel.unary_unary(
            "/edgeloop.v1.FederatedService/PushResult",
            request_serializer=pb.TaskResult.SerializeToString,
            response_deserializer=pb.PushResultResponse.FromString,
        )

    async def tasks(self, state: dict[str, float], capabilities: list[str]) -> AsyncIterator[pb.TrainTask]:
        """Yields tasks until the server ends the stream. Raises: TransportError."""
        call = self._tasks(pb.TaskStreamRequest(protocol_version=1, capabilities=capabilities, state=state))
        try:
            async for task in call:
                yield task
        except grpc.aio.AioRpcError as err:
            raise _translate(err) from err
        finally:
            call.cancel()

    async def push(self, result: pb.TaskResult, timeout_s: float = 30.0) -> pb.PushResultResponse:
        """Raises: TransportError."""
        try:
            resp: pb.PushResultResponse = await self._push(result, timeout=timeout_s)
        except grpc.aio.AioRpcError as err:
            raise _translate(err) from err
        return resp

    async def close(self) -> None:
        await self._channel.close(None)
