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

paho is imported only here and in `agent/federated/mqtt_link.py`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from google.protobuf.message import DecodeError
from paho.mqtt.enums import CallbackAPIVersion

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
from agent.transport.grpc_fleet import SessionRejectedError, error_for_status
from protos.edgeloop import mqtt
from protos.edgeloop.v1 import device_pb2 as pb

logger = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 4 * 2**20
_WARNED: set[str] = set()  # plain endpoints already warned about


# ---------------------------------------------------------------- endpoint and TLS


@dataclass(frozen=True)
class MqttEndpoint:
    host: str
    port: int
    tls: bool


def parse_endpoint(url: str) -> MqttEndpoint:
    """`mqtts://host:port` (default port 8883) or `mqtt://host:port` (1883). Raises: ConfigError."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(f"server.mqtt_endpoint must be mqtts://host:port or mqtt://host:port, got {url!r}")
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError as err:
        raise ConfigError(f"server.mqtt_endpoint has a bad port: {url!r}") from err
    return MqttEndpoint(parts.hostname, port, tls)


class _NamedContext(ssl.SSLContext):
    """Checks the broker's certificate against `expected_name` instead of the host we dial."""

    expected_name = ""

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        if self.expected_name:
            kwargs["server_hostname"] = self.expected_name
        return super().wrap_socket(sock, *args, **kwargs)


def tls_context(store: IdentityStore, server_name: str = "") -> ssl.SSLContext:
    """Mutual TLS with the identity store's files (read now: a renewed certificate is picked up)."""
    ctx = _NamedContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.expected_name = server_name
    try:
        ctx.load_verify_locations(cadata=store.ca_path.read_text())
        ctx.load_cert_chain(str(store.cert_path), str(store.key_path))
    except (OSError, ssl.SSLError, ValueError) as err:
        raise TransportError(f"cannot load the device identity for MQTT TLS: {err}") from err
    return ctx


def link_tls(
    endpoint: MqttEndpoint, store: IdentityStore | None, server_name: str = ""
) -> ssl.SSLContext | None:
    """The TLS context for a connection to `endpoint`: None when plain, else mutual TLS with the
    store's identity as it is on disk now. Raises: TransportError (no identity, unreadable files)."""
    if not endpoint.tls:
        return None
    if store is None:
        raise TransportError("an mqtts:// endpoint needs the device identity")
    return tls_context(store, server_name)


# ---------------------------------------------------------------- events from paho's thread


@dataclass(frozen=True)
class LinkConnected:
    failure: bool
    reason: str


@dataclass(frozen=True)
class LinkDisconnected:
    reason: str


@dataclass(frozen=True)
class LinkSubscribed:
    mid: int
    refused: bool


@dataclass(frozen=True)
class LinkMessage:
    topic: str
    payload: bytes


LinkEvent = LinkConnected | LinkDisconnected | LinkSubscribed | LinkMessage
_REFUSED_IDENTITY = {"Not authorized", "Bad user name or password", "Client identifier not valid"}


class PahoLink:
    """One paho connection whose callbacks only enqueue typed events on the asyncio loop."""

    def __init__(
        self,
        endpoint: MqttEndpoint,
        *,
        client_id: str,
        clean_session: bool,
        will: tuple[str, bytes, bool],
        tls: ssl.SSLContext | None,
        keepalive_s: int = 60,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.endpoint = endpoint
        self.keepalive_s = keepalive_s
        self.max_message_bytes = max_message_bytes
        self.events: asyncio.Queue[LinkEvent] = asyncio.Queue()
        self._early: collections.deque[LinkEvent] = collections.deque()  # seen before the SUBACK
        self.connected = False
        self._loop = asyncio.get_running_loop()
        c = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=paho.MQTTv311,
            reconnect_on_failure=False,
        )
        topic, payload, retain = will
        c.will_set(topic, payload, qos=mqtt.QOS, retain=retain)
        if tls is not None:
            c.tls_set_context(tls)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        self._client = c

    # paho's network thread: enqueue only
    def _put(self, event: LinkEvent) -> None:
        try:
            self._loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    def _on_connect(self, _c: Any, _u: Any, _flags: Any, rc: Any, _props: Any) -> None:
        self._put(LinkConnected(failure=bool(rc.is_failure), reason=str(rc)))

    def _on_disconnect(self, _c: Any, _u: Any, _flags: Any, rc: Any, _props: Any) -> None:
        self._put(LinkDisconnected(reason=str(rc)))

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, codes: Any, _props: Any) -> None:
        self._put(LinkSubscribed(mid=mid, refused=any(code.is_failure for code in codes)))

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        self._put(LinkMessage(topic=str(msg.topic), payload=bytes(msg.payload)))

    # the asyncio side
    async def connect(self, subscriptions: list[str], timeout_s: float) -> None:
        """Connect, wait for CONNACK and SUBACK. Raises: TransportError / SessionRejectedError."""
        ep = self.endpoint
        try:
            await asyncio.wait_for(
                asyncio.to_thread(self._client.connect, ep.host, ep.port, self.keepalive_s), timeout_s
            )
        except (OSError, ValueError, TimeoutError) as err:  # refused, TLS failure, bad certificate
            raise TransportError(f"cannot connect to MQTT broker {ep.host}:{ep.port}: {err!r}") from err
        self._client.loop_start()
        first = await self._next(timeout_s, "CONNACK")
        if isinstance(first, LinkDisconnected):
            raise TransportError(f"MQTT broker closed the connection: {first.reason}")
        if not isinstance(first, LinkConnected):
            raise TransportError(f"unexpected first MQTT event {first!r}")
        if first.failure:
            if first.reason in _REFUSED_IDENTITY:
                raise SessionRejectedError(f"MQTT broker refused this device: {first.reason}")
            raise TransportError(f"MQTT broker refused the connection: {first.reason}")
        self.connected = True
        if not subscriptions:
            return
        rc, mid = self._client.subscribe([(t, mqtt.QOS) for t in subscriptions])
        if rc != paho.MQTT_ERR_SUCCESS:
            raise TransportError(f"MQTT subscribe failed: {paho.error_string(rc)}")
        early: list[LinkEvent] = []
        while True:
            ev = await self._next(timeout_s, "SUBACK")
            if isinstance(ev, LinkSubscribed) and ev.mid == mid:
                suback = ev
                break
            if isinstance(ev, LinkDisconnected):
                raise TransportError(f"MQTT connection lost while subscribing: {ev.reason}")
            early.append(ev)  # retained messages may arrive before the SUBACK is seen
        self._early.extend(early)
        if suback.refused:
            raise SessionRejectedError(f"MQTT broker refused the subscriptions {subscriptions}")

    async def get(self) -> LinkEvent:
        """The next event, in arrival order."""
        return self._early.popleft() if self._early else await self.events.get()

    async def _next(self, timeout_s: float, what: str) -> LinkEvent:
        try:
            return await asyncio.wait_for(self.events.get(), timeout_s)
        except TimeoutError as err:
            raise TransportError(f"no {what} from the MQTT broker within {timeout_s:.0f}s") from err

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Queue a QoS 1 message. Raises: TransportError when the connection is gone."""
        info = self._client.publish(topic, payload, qos=mqtt.QOS, retain=retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            self.connected = False
            raise TransportError(f"MQTT publish on {topic} failed: {paho.error_string(info.rc)}")

    async def close(self, last: tuple[str, bytes, bool] | None = None, timeout_s: float = 2.0) -> None:
        """Publish `last` (topic, payload, retain) if still connected, then disconnect cleanly."""
        if last is not None and self.connected:
            topic, payload, retain = last
            try:
                info = self._client.publish(topic, payload, qos=mqtt.QOS, retain=retain)
                await asyncio.to_thread(info.wait_for_publish, timeout_s)
            except (RuntimeError, ValueError, OSError) as err:
                logger.debug("final MQTT publish on %s not confirmed: %s", topic, err)
        self.connected = False
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)


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
