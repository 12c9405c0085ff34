"""One paho connection for the agent (`PahoLink`), whose network thread only enqueues typed events.

Shared by the Sync session (`mqtt_fleet.py`) and the federated link (`agent/federated/mqtt_link.py`):
the broker URL (`parse_endpoint`), mutual TLS from the identity store (`link_tls`), and a paho client
(paho-mqtt 2.x, callback API v2, MQTT 3.1.1) whose callbacks become `LinkEvent`s handed to the
asyncio loop with `call_soon_threadsafe`; decoding and every state change happen on the loop.
`connect()` waits for CONNACK and SUBACK: a refused identity or subscription is
`SessionRejectedError`, anything else that fails `TransportError`.

paho is imported only here. Does not know what the payloads mean (the session and link decode them).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from agent.errors import ConfigError, TransportError
from agent.identity import IdentityStore
from agent.transport.grpc_fleet import SessionRejectedError
from protos.edgeloop import mqtt

logger = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 4 * 2**20


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
