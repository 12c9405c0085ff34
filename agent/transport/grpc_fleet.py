"""gRPC adapter for the fleet server: `enroll()` and `GrpcFleetConnector` (Sync sessions).

Translates every grpc error into the AgentError tree at this boundary, so nothing above sees
`grpc.RpcError`. TLS: enrollment authenticates the server with the configured fleet CA; Sync is
mutual TLS with the device certificate. `error_for_status` is the one mapping from a gRPC status
name to the agent's error (also used for `SyncResponse.closed` on MQTT, so both back off alike).
The connector reloads the identity at every `open()` when given a loader, so a renewed
certificate is used by the next session.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from agent.errors import AgentError, EnrollmentError, RateLimitedError, TransportError
from agent.identity import Identity
from agent.outbox import OutboxRecord
from agent.renewal import cert_fingerprint
from agent.state import DesiredState, DeviceReport, Inbound
from agent.transport.codec import (
    ServerClosed,
    command_result_to_proto,
    desired_from_proto,
    inbound_from_proto,
    renew_to_proto,
    report_to_proto,
    telemetry_to_proto,
)
from protos.edgeloop.v1 import device_pb2 as pb
from protos.edgeloop.v1 import device_pb2_grpc

logger = logging.getLogger(__name__)

_FATAL = {
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
}


class SessionRejectedError(TransportError):
    """The server refused this device's session (revoked, unknown, bad message): back off long."""


@dataclass(frozen=True)
class EnrollResult:
    device_id: str
    cert_chain_pem: bytes
    ca_pem: bytes
    sync_endpoint: str
    desired: DesiredState


def _options(server_name: str) -> list[tuple[str, Any]]:
    opts: list[tuple[str, Any]] = [
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.use_local_subchannel_pool", 1),
    ]
    if server_name:
        opts.append(("grpc.ssl_target_name_override", server_name))
    return opts


async def enroll(
    *,
    endpoint: str,
    ca_pem: bytes,
    server_name: str,
    bootstrap_token: str,
    csr_pem: bytes,
    device_id: str,
    profile: str,
    agent_version: str,
    timeout_s: float = 20.0,
) -> EnrollResult:
    """Raises: EnrollmentError (refused; do not retry as is) or TransportError (retry later)."""
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    async with grpc.aio.secure_channel(endpoint, creds, options=_options(server_name)) as channel:
        stub = device_pb2_grpc.DeviceServiceStub(channel)  # type: ignore[no-untyped-call]
        try:
            resp: pb.EnrollResponse = await stub.Enroll(
                pb.EnrollRequest(
                    bootstrap_token=bootstrap_token,
                    csr_pem=csr_pem,
                    device_id=device_id,
                    profile=profile,
                    agent_version=agent_version,
                ),
                timeout=timeout_s,
            )
        except grpc.aio.AioRpcError as err:
            if err.code() in _FATAL:
                raise EnrollmentError(f"enrollment refused ({err.code().name}): {err.details()}") from err
            raise TransportError(f"cannot reach {endpoint} ({err.code().name}): {err.details()}") from err
    return EnrollResult(
        device_id=resp.device_id,
        cert_chain_pem=resp.certificate_chain_pem,
        ca_pem=resp.ca_certificate_pem,
        sync_endpoint=resp.sync_endpoint,
        desired=desired_from_proto(resp.desired),
    )


class GrpcSyncSession:
    """One open Sync stream. `receive()` returns None when the server closed it cleanly."""

    def __init__(self, channel: grpc.aio.Channel, call: Any, fingerprint: str = "") -> None:
        self._channel = channel
        self._call = call
        self._fingerprint = fingerprint

    async def send_report(self, report: DeviceReport) -> None:
        await self._write(report_to_proto(report, self._fingerprint))

    async def send_renew(self, csr_pem: bytes) -> None:
        await self._write(renew_to_proto(csr_pem))

    async def send_telemetry(self, batch_id: int, records: list[OutboxRecord]) -> None:
        await self._write(telemetry_to_proto(batch_id, records))

    async def send_command_result(self, command_id: str, ok: bool, detail: str) -> None:
        await self._write(command_result_to_proto(command_id, ok, detail))

    async def receive(self) -> Inbound | None:
        while True:
            try:
                msg = await self._call.read()
            except grpc.aio.AioRpcError as err:
                raise _translate(err) from err
            except (grpc.aio.UsageError, asyncio.InvalidStateError) as err:
                raise TransportError(f"stream closed: {err}") from err
            if msg is grpc.aio.EOF:  # type: ignore[attr-defined]
                return None
            inbound = inbound_from_proto(msg)
            if isinstance(inbound, ServerClosed):
                raise error_for_status(inbound.code, inbound.detail)
            if inbound is not None:
                return inbound

    async def close(self) -> None:
        try:
            await self._call.done_writing()
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError, AgentError):
            pass
        self._call.cancel()
        await self._channel.close(None)

    async def _write(self, msg: pb.SyncRequest) -> None:
        try:
            await self._call.write(msg)
        except grpc.aio.AioRpcError as err:
            raise _translate(err) from err
        except (grpc.aio.UsageError, grpc.RpcError, asyncio.InvalidStateError) as err:
            raise TransportError(f"stream closed: {err}") from err


class GrpcFleetConnector:
    """Opens Sync sessions with the device identity (mutual TLS)."""

    def __init__(
        self,
        *,
        identity: Identity,
        endpoint: str,
        server_name: str = "",
        reload: Callable[[], Identity] | None = None,
    ) -> None:
        self._identity = identity
        self._endpoint = endpoint
        self._server_name = server_name
        self._reload = reload

    async def open(self) -> GrpcSyncSession:
        if self._reload is not None:
            self._identity = self._reload()
        creds = grpc.ssl_channel_credentials(
            root_certificates=self._identity.ca_pem,
            private_key=self._identity.key_pem,
            certificate_chain=self._identity.cert_chain_pem,
        )
        channel = grpc.aio.secure_channel(self._endpoint, creds, options=_options(self._server_name))
        try:
            stub = device_pb2_grpc.DeviceServiceStub(channel)  # type: ignore[no-untyped-call]
            call = stub.Sync()
            await call.wait_for_connection()
        except grpc.aio.AioRpcError as err:
            await channel.close(None)
            raise _translate(err) from err
        return GrpcSyncSession(channel, call, cert_fingerprint(self._identity.cert_chain_pem))


_FATAL_NAMES = frozenset(code.name for code in _FATAL)


def error_for_status(code_name: str, detail: str) -> TransportError:
    """The agent's error for a gRPC status name: RESOURCE_EXHAUSTED -> RateLimitedError, a refusal
    (UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT, ...) -> SessionRejectedError, anything
    else -> TransportError (retry with the normal backoff)."""
    if code_name == grpc.StatusCode.RESOURCE_EXHAUSTED.name:
        return RateLimitedError(f"throttled by server: {detail}")
    if code_name in _FATAL_NAMES:
        return SessionRejectedError(f"server rejected session ({code_name}): {detail}")
    return TransportError(f"sync stream failed ({code_name or 'UNKNOWN'}): {detail}")


def _translate(err: grpc.aio.AioRpcError) -> TransportError:
    return error_for_status(err.code().name, err.details() or "")
