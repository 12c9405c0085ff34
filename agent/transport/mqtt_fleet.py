"""MQTT adapter for the fleet session (`MqttFleetConnector`), beside `grpc_fleet.py`, same port.

One session is one paho client (paho-mqtt 2.x, callback API v2, MQTT 3.1.1) with client id
`mqtt.client_id(device_id)` and a persistent broker session (`clean_session=False`), so QoS 1
messages for the device wait at the broker while it is away. On connect it subscribes to `down`
and `desired` (QoS 1; the broker sends the retained desired state at once) and publishes
`b"online"` retained on `status`; its last will is `b"offline"` retained, and `close()` publishes
the same before a clean disconnect. Sends are bare `SyncRequest`s on `up` at QoS 1; delivery is
made exactly-once from the user's view by the server's seq acks, as on gRPC.

Threading: paho's network thread only turns callbacks into typed events and hands them to the
asyncio loop with `call_soon_threadsafe`; all decoding and every state change happen on the loop.

Errors (the same classes and the same backoff as the gRPC adapter):
- TCP refused, TLS handshake failure (unknown CA, revoked certificate once the broker reads the
  CRL), connection lost, no CONNACK in time -> `TransportError` (retry with backoff);
- CONNACK "not authorized" / "bad user name or password", or a refused subscription (ACL)
  -> `SessionRejectedError` (back off to the maximum);
- `SyncResponse.closed` -> `grpc_fleet.error_for_status(code)`: RESOURCE_EXHAUSTED ->
  `RateLimitedError`; UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT, ... ->
  `SessionRejectedError`; anything else -> `TransportError`.
A malformed payload on `down`/`desired` is dropped, counted per topic kind (`malformed`) and
logged once per kind; it never ends the session.

URLs: `mqtts://host:port` (mutual TLS: fleet CA, the device's key and certificate from the
identity store, TLS 1.2+, host name checked against `server_name` when set, else the host) or
`mqtt://host:port` (plain, no identity: tests and demos on a local broker only; warned once).

The paho connection itself (thread hand-off, CONNACK/SUBACK, TLS) is `paho_link.py`.
"""

from __future__ import annotations

import logging
import ssl
from collections import Counter

from google.protobuf.message import DecodeError

from agent.errors import ConfigError, TransportError
from agent.identity import IdentityStore
from agent.outbox import OutboxRecord
from agent.renewal import cert_fingerprint
from agent.state import DeviceReport, Inbound
from agent.transport.codec import (
    ServerClosed,
    SessionEvent,
    command_result_to_proto,
    desired_from_proto,
    inbound_from_proto,
    renew_to_proto,
    report_to_proto,
    telemetry_to_proto,
)
from agent.transport.grpc_fleet import error_for_status
from agent.transport.paho_link import (
    DEFAULT_MAX_MESSAGE_BYTES,
    LinkDisconnected,
    LinkMessage,
    PahoLink,
    link_tls,
    parse_endpoint,
)
from protos.edgeloop import mqtt
from protos.edgeloop.v1 import device_pb2 as pb

logger = logging.getLogger(__name__)

_WARNED: set[str] = set()  # plain endpoints already warned about

# ---------------------------------------------------------------- decoding (pure)


class MalformedPayloadError(ValueError):
    """A payload that is not the message its topic promises (dropped and counted by the caller)."""


def decode_inbound(
    kind: str, payload: bytes, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> SessionEvent | None:
    """The session event in a `down` or `desired` payload; None for nothing to act on (an empty
    retained desired, a message kind this agent does not know). Raises: MalformedPayloadError."""
    if len(payload) > max_bytes:
        raise MalformedPayloadError(f"{len(payload)} bytes is over the {max_bytes} byte limit")
    try:
        if kind == mqtt.DESIRED:
            if not payload:
                return None  # the server cleared the retained message
            return desired_from_proto(pb.DesiredState.FromString(payload))
        if kind == mqtt.DOWN:
            return inbound_from_proto(pb.SyncResponse.FromString(payload))
    except (DecodeError, ValueError, TypeError, OverflowError) as err:
        raise MalformedPayloadError(f"not a valid {kind} payload: {err}") from err
    raise MalformedPayloadError(f"unexpected topic kind {kind!r}")


# ---------------------------------------------------------------- session and connector


class MqttSyncSession:
    """One MQTT connection used as a Sync session. `receive()` raises when the connection drops."""

    def __init__(
        self, link: PahoLink, device_id: str, connector: MqttFleetConnector, fingerprint: str
    ) -> None:
        self._link = link
        self._device_id = device_id
        self._connector = connector
        self._fingerprint = fingerprint
        self._up = mqtt.topic(device_id, mqtt.UP)
        self._status = mqtt.topic(device_id, mqtt.STATUS)

    async def send_report(self, report: DeviceReport) -> None:
        self._link.publish(self._up, report_to_proto(report, self._fingerprint).SerializeToString())

    async def send_telemetry(self, batch_id: int, records: list[OutboxRecord]) -> None:
        self._link.publish(self._up, telemetry_to_proto(batch_id, records).SerializeToString())

    async def send_command_result(self, command_id: str, ok: bool, detail: str) -> None:
        self._link.publish(self._up, command_result_to_proto(command_id, ok, detail).SerializeToString())

    async def send_renew(self, csr_pem: bytes) -> None:
        self._link.publish(self._up, renew_to_proto(csr_pem).SerializeToString())

    async def receive(self) -> Inbound | None:
        while True:
            ev = await self._link.get()
            if isinstance(ev, LinkDisconnected):
                self._link.connected = False
                raise TransportError(f"MQTT connection lost: {ev.reason}")
            if not isinstance(ev, LinkMessage):
                continue
            parsed = mqtt.parse(ev.topic)
            if parsed is None or parsed[0] != self._device_id:
                continue
            try:
                event = decode_inbound(parsed[1], ev.payload, self._link.max_message_bytes)
            except MalformedPayloadError as err:
                self._connector.count_malformed(ev.topic, parsed[1], err)
                continue
            if isinstance(event, ServerClosed):
                raise error_for_status(event.code, event.detail)
            if event is not None:
                return event

    async def close(self) -> None:
        await self._link.close((self._status, mqtt.OFFLINE, True))


class MqttFleetConnector:
    """Opens MQTT Sync sessions for one device (`store` gives the TLS identity at each open)."""

    def __init__(
        self,
        *,
        endpoint: str,
        device_id: str,
        store: IdentityStore | None,
        server_name: str = "",
        keepalive_s: int = 60,
        connect_timeout_s: float = 20.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.endpoint = parse_endpoint(endpoint)
        if self.endpoint.tls and store is None:
            raise ConfigError("an mqtts:// endpoint needs the device identity")
        self.device_id = device_id
        self._store = store
        self._server_name = server_name
        self._keepalive_s = keepalive_s
        self._connect_timeout_s = connect_timeout_s
        self._max_message_bytes = max_message_bytes
        self.malformed: Counter[str] = Counter()  # topic kind -> payloads dropped
        self._logged: set[str] = set()
        mqtt.topic(device_id, mqtt.UP)  # validates the id now (ValueError), not at first connect
        if not self.endpoint.tls:
            _warn_plain(endpoint)

    def tls(self) -> tuple[ssl.SSLContext | None, str]:
        """The TLS context and the fingerprint of the certificate it presents ("" when plain)."""
        ctx = link_tls(self.endpoint, self._store, self._server_name)
        if ctx is None or self._store is None:
            return None, ""
        try:
            chain = self._store.cert_path.read_bytes()
        except OSError as err:
            raise TransportError(f"cannot read the device certificate: {err}") from err
        return ctx, cert_fingerprint(chain)

    async def open(self) -> MqttSyncSession:
        ctx, fingerprint = self.tls()
        status = mqtt.topic(self.device_id, mqtt.STATUS)
        link = PahoLink(
            self.endpoint,
            client_id=mqtt.client_id(self.device_id),
            clean_session=False,
            will=(status, mqtt.OFFLINE, True),
            tls=ctx,
            keepalive_s=self._keepalive_s,
            max_message_bytes=self._max_message_bytes,
        )
        try:
            await link.connect(
                [mqtt.topic(self.device_id, mqtt.DOWN), mqtt.topic(self.device_id, mqtt.DESIRED)],
                self._connect_timeout_s,
            )
            link.publish(status, mqtt.ONLINE, retain=True)
        except BaseException:
            await link.close()
            raise
        return MqttSyncSession(link, self.device_id, self, fingerprint)

    def count_malformed(self, topic: str, kind: str, err: Exception) -> None:
        self.malformed[kind] += 1
        if kind not in self._logged:
            self._logged.add(kind)
            logger.warning(
                "malformed MQTT payload dropped topic=%s error=%s (logged once per kind)", topic, err
            )


def _warn_plain(endpoint: str) -> None:
    if not _WARNED:
        _WARNED.add(endpoint)
        logger.warning("MQTT without TLS (%s): for tests and demos on a local broker only", endpoint)
