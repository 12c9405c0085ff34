"""Builds the two gRPC servers: enrollment (server-authenticated TLS) and device (mutual TLS).

They are separate ports on purpose: the device port requires a fleet-CA client certificate at
the TLS handshake, so a client without one never reaches a handler.
"""

from __future__ import annotations

import logging
import resource
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from fleet_server.grpc_api.servicer import SERVICE, DeviceServicer
from fleet_server.pki import FleetCA
from fleet_server.settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class GrpcServers:
    enroll: grpc.aio.Server
    device: grpc.aio.Server
    enroll_port: int
    device_port: int

    async def start(self) -> None:
        await self.enroll.start()
        await self.device.start()

    async def stop(self, grace_s: float = 2.0) -> None:
        await self.device.stop(grace_s)
        await self.enroll.stop(grace_s)


def _options(settings: Settings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", 4 * 1024 * 1024),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.max_connection_age_grace_ms", 10_000),
        # A TLS handshake not done in 20 s is dropped (default 120 s): in a reconnect storm the
        # devices give up and retry long before that, and every stale handshake holds an fd.
        ("grpc.server_handshake_timeout_ms", 20_000),
    ]


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit; returns the soft limit now.

    Every device on the Sync port holds a TCP connection, so the common soft limit of 1,024
    caps a fleet at about a thousand gRPC devices (accept() then fails with EMFILE); a reconnect
    storm briefly holds more (stale connections not yet noticed closed)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as err:
            logger.warning("could not raise the open-file limit from %d to %d: %s", soft, target, err)
    return soft


def build_grpc_servers(
    *,
    settings: Settings,
    ca: FleetCA,
    servicer: DeviceServicer,
    device_handlers: Sequence[grpc.GenericRpcHandler[Any, Any]] = (),
) -> GrpcServers:
    """`device_handlers`: extra services on the mutual-TLS device port (e.g. FederatedService)."""
    fds = raise_fd_limit()
    logger.info("open-file limit %d (one per connected gRPC device)", fds)
    key_pem, chain_pem = ca.ensure_server_certificate(settings.public_hostnames)

    enroll = grpc.aio.server(options=_options(settings))
    enroll.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE, {"Enroll": grpc.unary_unary_rpc_method_handler(servicer.enroll)}
            ),
        )
    )
    enroll_port = enroll.add_secure_port(
        f"{settings.grpc_host}:{settings.enroll_port}",
        grpc.ssl_server_credentials([(key_pem, chain_pem)]),
    )

    device = grpc.aio.server(options=_options(settings))
    device.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Sync": grpc.stream_stream_rpc_method_handler(
                        servicer.sync, response_serializer=lambda m: m.SerializeToString()
                    )
                },
            ),
            *device_handlers,
        )
    )
    device_port = device.add_secure_port(
        f"{settings.grpc_host}:{settings.device_port}",
        grpc.ssl_server_credentials(
            [(key_pem, chain_pem)], root_certificates=ca.cert_pem, require_client_auth=True
        ),
    )
    return GrpcServers(enroll=enroll, device=device, enroll_port=enroll_port, device_port=device_port)
