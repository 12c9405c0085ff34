"""One simulated device's session to the fleet server, whichever transport (contract B, issue 15).

`Link` is what a simulated device talks through: `open` (connect, and subscribe on MQTT), `send` a
`SyncRequest`, `recv` the next downlink (`SyncResponse`, or on MQTT a `DesiredState` from the
retained `desired` topic), `close`. Every failure surfaces as `LinkError`; a refusal of the
identity (revoked, unknown certificate) as its subclass `LinkRejected`, which the simulator backs
off from at the maximum delay. All methods of one link run on one asyncio loop.

`make_link` picks the implementation: gRPC (`grpc_link.GrpcLink`, one mutual-TLS channel and Sync
stream) or MQTT (`mqtt_link.MqttLink`, a light asyncio MQTT 3.1.1 client), imported lazily so a
gRPC-only run never imports the MQTT client and the reverse.

Owns the interface only; does not own reconnect policy, sequencing or statistics (device.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from protos.edgeloop.v1 import device_pb2 as pb


class LinkError(Exception):
    """Connect/handshake failed or timed out, or the connection was lost."""


class LinkRejected(LinkError):
    """The server or broker refused the identity: do not retry fast."""


@dataclass(frozen=True)
class SimIdentity:
    device_id: str
    key_pem: bytes
    cert_pem: bytes  # the device certificate chain (device certificate first, then the fleet CA)
    ca_pem: bytes  # the fleet CA (trust anchor for the server / broker certificate)


class Link(Protocol):
    """One device's session to the fleet server, either transport. All methods on one asyncio loop."""

    async def open(self, timeout_s: float) -> None:
        """Connect (+ subscribe); raises LinkError (LinkRejected when the identity is refused)."""

    async def send(self, req: pb.SyncRequest) -> None:
        """QoS 1 publish (returns at PUBACK) / stream write; raises LinkError."""

    async def recv(self) -> pb.SyncResponse | pb.DesiredState:
        """The next downlink; raises LinkError when the session drops."""

    async def close(self) -> None:
        """Clean close (MQTT: publish `offline` first). Never raises."""


def make_link(transport: str, identity: SimIdentity, target: str, **kw: Any) -> Link:
    """A link for `transport`: "grpc" -> target "host:port" (kw: server_name); "mqtt" -> target
    "mqtts://host:port" or "mqtt://host:port" (kw: keepalive_s). Raises ValueError otherwise."""
    if transport == "grpc":
        from bench.fleet_sim.grpc_link import GrpcLink

        return GrpcLink(identity, target, **kw)
    if transport == "mqtt":
        from bench.fleet_sim.mqtt_link import MqttLink

        url = urlsplit(target)
        if url.scheme not in ("mqtt", "mqtts") or not url.hostname or not url.port:
            raise ValueError(f"mqtt target must be mqtt[s]://host:port, got {target!r}")
        keepalive_s = kw.pop("keepalive_s", 60.0)
        return MqttLink(identity, url.hostname, url.port, url.scheme == "mqtts", keepalive_s, **kw)  # type: ignore[no-any-return]
    raise ValueError(f"unknown transport {transport!r} (grpc or mqtt)")
