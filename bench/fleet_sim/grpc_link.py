"""gRPC link: one grpc.aio mutual-TLS channel and one `edgeloop.v1.DeviceService/Sync` stream.

Channel options as the agent's (agent/transport/grpc_fleet.py): keepalive, a local subchannel
pool (so thousands of devices in one process never share a TCP connection, each is its own TLS
session as on a real fleet), and `ssl_target_name_override` when a server name is given.
Errors: UNAUTHENTICATED / PERMISSION_DENIED -> LinkRejected, every other failure -> LinkError;
a `SessionClosed` downlink is turned into the same errors by its code.

Owns one session's IO; does not retry (device.py decides when to reconnect).
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from bench.fleet_sim.link import LinkError, LinkRejected, SimIdentity
from protos.edgeloop.v1 import device_pb2 as pb

_REJECTED = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})
_SYNC = "/edgeloop.v1.DeviceService/Sync"


def _options(server_name: str) -> list[tuple[str, Any]]:
    opts: list[tuple[str, Any]] = [
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.use_local_subchannel_pool", 1),
        # reconnects are the simulator's decision (with its own backoff), not the channel's
        ("grpc.enable_retries", 0),
    ]
    if server_name:
        opts.append(("grpc.ssl_target_name_override", server_name))
    return opts


def _error(code: grpc.StatusCode | str, detail: str) -> LinkError:
    name = code.name if isinstance(code, grpc.StatusCode) else code
    if name in {c.name for c in _REJECTED}:
        return LinkRejected(f"{name}: {detail}")
    return LinkError(f"{name or 'UNKNOWN'}: {detail}")


class GrpcLink:
    def __init__(self, identity: SimIdentity, target: str, server_name: str = "") -> None:
        self.identity = identity
        self.target = target
        self.server_name = server_name
        self._channel: grpc.aio.Channel | None = None
        self._call: Any = None

    async def open(self, timeout_s: float) -> None:
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.identity.ca_pem,
            private_key=self.identity.key_pem,
            certificate_chain=self.identity.cert_pem,
        )
        self._channel = grpc.aio.secure_channel(self.target, creds, options=_options(self.server_name))
        self._call = self._channel.stream_stream(
            _SYNC,
            request_serializer=pb.SyncRequest.SerializeToString,
            response_deserializer=pb.SyncResponse.FromString,
        )()
        try:
            await asyncio.wait_for(self._call.wait_for_connection(), timeout_s)
        except TimeoutError as err:
            await self.close()
            raise LinkError(f"connect to {self.target} timed out after {timeout_s:g}s") from err
        except grpc.aio.AioRpcError as err:
            await self.close()
            raise _error(err.code(), err.details() or "") from err
        except (grpc.aio.UsageError, asyncio.InvalidStateError, OSError) as err:
            await self.close()
            raise LinkError(f"connect to {self.target}: {err}") from err

    async def send(self, req: pb.SyncRequest) -> None:
        if self._call is None:
            raise LinkError("not open")
        try:
            await self._call.write(req)
        except grpc.aio.AioRpcError as err:
            raise _error(err.code(), err.details() or "") from err
        except (grpc.aio.UsageError, grpc.RpcError, asyncio.InvalidStateError) as err:
            raise LinkError(f"stream closed: {err!r}") from err

    async def recv(self) -> pb.SyncResponse:
        if self._call is None:
            raise LinkError("not open")
        try:
            msg = await self._call.read()
        except grpc.aio.AioRpcError as err:
            raise _error(err.code(), err.details() or "") from err
        except (grpc.aio.UsageError, grpc.RpcError, asyncio.InvalidStateError) as err:
            raise LinkError(f"stream closed: {err!r}") from err
        if msg is grpc.aio.EOF:
            raise LinkError("server ended the stream")
        if msg.WhichOneof("msg") == "closed":
            raise _error(msg.closed.code, msg.closed.detail)
        return msg  # type: ignore[no-any-return]

    async def close(self) -> None:
        call, channel = self._call, self._channel
        self._call = self._channel = None
        if call is not None:
            call.cancel()
        if channel is not None:
            try:
                await channel.close(None)
            except Exception:  # closing must never raise
                pass
