"""The fleet server's connection to the MQTT broker (the only server module importing paho).

One paho client (MQTT 5, TLS client certificate for `mqtts://`) with a persistent session
(`clean_start=False`, session expiry `mqtt_session_expiry_s`) under a stable client id. It reads
what devices publish through shared subscriptions (`$share/<group>/...`, replicas split the
load), except `status`: presence must be known by every replica and retained messages are only
delivered to non-shared subscriptions, so each replica subscribes to it directly.

QoS 1 deliveries are acked by hand (`manual_ack`): the paho thread only hands each message to
the event loop through a queue bounded by `mqtt_inflight` slots (it blocks when they are all
taken, so the broker holds the rest: backpressure), and `client.ack(mid)` is sent when
`MqttDevices.handle` says the message is settled, i.e. after its rows are committed. A server
killed before that gets the message again from its persistent session; the (device_id, seq) key
makes that harmless.
`mqtt_inflight` is announced as the MQTT 5 Receive Maximum: how many unacked messages the broker
may have in flight to this server.

Does not decide what a message means (devices.py) or write broker configuration (brokerconf.py).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from fleet_server.mqtt.devices import MqttDevices
from fleet_server.mqtt.endpoint import BrokerEndpoint
from fleet_server.settings import Settings
from protos.edgeloop import mqtt

logger = logging.getLogger(__name__)

KEEPALIVE_S = 30


class BridgeStartError(Exception):
    """The broker could not be reached or refused the connection at start: check mqtt_url/TLS."""


@dataclass(frozen=True)
class _Message:
    topic: str
    payload: bytes
    mid: int
    qos: int


class _PublishWindow:
    """At most `size` publishes handed to paho and not yet acked; the rest wait here in order.
    `submit` from any thread; `done` (paho's on_publish) sends the next waiting one."""

    def __init__(self, size: int, send: Callable[[str, bytes, bool], None]) -> None:
        self._size = size
        self._send = send
        self._lock = threading.Lock()
        self._open = 0
        self._waiting: collections.deque[tuple[str, bytes, bool]] = collections.deque()

    def submit(self, topic: str, payload: bytes, retain: bool) -> None:
        with self._lock:
            if self._open >= self._size:
                self._waiting.append((topic, payload, retain))
                return
            self._open += 1
        self._send(topic, payload, retain)

    def done(self) -> None:
        with self._lock:
            if not self._waiting:
                self._open = max(0, self._open - 1)
                return
            item = self._waiting.popleft()  # its slot passes to the next one
        self._send(*item)

    @property
    def waiting(self) -> int:
        return len(self._waiting)


def default_client_id() -> str:
    """Stable across restarts, so a restarted server resumes its persistent session and the
    messages the broker queued for it. Mosquitto 2.0 also hands shared-subscription messages to an
    offline member of the group: a client id that changed on every start (e.g. with the pid) would
    leave an orphaned session collecting part of the uplink until it expires. Two servers on one
    host must set `mqtt_client_id` apart (the same id would take each other's connection over)."""
    return f"edgeloop-server-{socket.gethostname()}"


class MqttBridge:
    """Start with `await start(handler_factory)` on the serving loop; `await stop()` at shutdown."""

    def __init__(self, settings: Settings) -> None:
        endpoint = BrokerEndpoint.from_settings(settings)
        if endpoint is None:
            raise ValueError("the MQTT bridge needs settings.mqtt_url")
        self._broker = endpoint
        self._settings = settings
        self.client_id = settings.mqtt_client_id or default_client_id()
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=paho.MQTTv5,
            manual_ack=True,
        )
        endpoint.configure_tls(self._client)
        # paho's own window rescans every queued message on each PUBACK (O(queue) per ack: a
        # burst of 10,000 publishes cost ~10^8 steps); the bridge keeps the window instead.
        self._client.max_inflight_messages_set(0)
        self._window = _PublishWindow(settings.mqtt_inflight, self._send)
        self._client.on_publish = self._on_publish
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[_Message] | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._connected: asyncio.Event | None = None
        self._stopping = False
        self._slots = threading.BoundedSemaphore(settings.mqtt_inflight)
        self.handler: MqttDevices | None = None
        self.connects = 0

    @property
    def endpoint(self) -> str:
        return self._broker.url

    async def start(self, handler: MqttDevices, *, timeout_s: float = 15.0) -> None:
        """Connect, subscribe and start consuming. Raises BridgeStartError if not connected in time."""
        self.handler = handler
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()  # bounded by _slots
        self._connected = asyncio.Event()
        self._consumer = asyncio.create_task(self._consume(), name="mqtt-bridge")
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._settings.mqtt_session_expiry_s
        props.ReceiveMaximum = self._settings.mqtt_inflight
        try:
            await asyncio.to_thread(
                self._client.connect,
                self._broker.host,
                self._broker.port,
                KEEPALIVE_S,
                clean_start=False,
                properties=props,
            )
        except OSError as err:
            await self._cancel_consumer()
            raise BridgeStartError(f"MQTT broker {self.endpoint} unreachable: {err}") from err
        self._client.loop_start()
        try:
            await asyncio.wait_for(self._connected.wait(), timeout_s)
        except TimeoutError as err:
            await self.stop()
            raise BridgeStartError(f"MQTT broker {self.endpoint} did not accept the connection") from err
        logger.info("mqtt bridge connected broker=%s client_id=%s", self.endpoint, self.client_id)

    async def stop(self) -> None:
        """Disconnect (unacked messages stay with the broker for the next start) and stop."""
        self._stopping = True
        with contextlib.suppress(Exception):
            self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)
        await self._cancel_consumer()
        if self.handler is not None:
            await self.handler.stop()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Queue a QoS 1 publish: at most `mqtt_inflight` unacked in paho (it sends them, and
        resends them after a reconnect), the rest wait in the bridge's window. Thread-safe."""
        self._window.submit(topic, payload, retain)

    def _send(self, topic: str, payload: bytes, retain: bool) -> None:
        info = self._client.publish(topic, payload, qos=mqtt.QOS, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            logger.warning("mqtt publish failed topic=%s rc=%s", topic, info.rc)
            self._window.done()  # paho did not keep it: no PUBACK will free its slot

    def kick(self, device_id: str, code: str, detail: str) -> None:
        if self.handler is not None:
            self.handler.kick(device_id, code, detail)

    # ------------------------------------------------------------ paho thread

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            logger.error("mqtt broker refused the connection broker=%s reason=%s", self.endpoint, reason)
            return
        self.connects += 1
        group = self._settings.mqtt_share_group
        filters = [
            f if f.endswith("/" + mqtt.STATUS) else mqtt.shared(f, group) for f in mqtt.server_filters()
        ]
        # Always (re)subscribe: idempotent, and a broker that lost the session forgets them.
        client.subscribe([(f, mqtt.QOS) for f in filters])
        if self._loop is not None and self._connected is not None:
            self._loop.call_soon_threadsafe(self._connected.set)

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Properties,
    ) -> None:
        self._window.done()

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if not self._stopping:
            logger.warning(
                "mqtt bridge disconnected broker=%s reason=%s; reconnecting", self.endpoint, reason
            )

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        """Hand the message to the loop without waiting for it (a per-message thread handoff
        would cost a GIL switch each); blocks only while the queue is full (backpressure)."""
        while not self._stopping:
            if self._slots.acquire(timeout=1.0):
                break
        else:
            return  # not acked: the broker delivers it again
        if self._loop is None or self._queue is None:
            self._slots.release()
            return
        item = _Message(msg.topic, bytes(msg.payload), msg.mid, msg.qos)
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    # ------------------------------------------------------------ serving loop

    async def _consume(self) -> None:
        assert self._queue is not None
        while True:
            item = await self._queue.get()
            self._slots.release()
            if self.handler is None:
                continue
            await self.handler.handle(item.topic, item.payload, functools.partial(self._ack, item))

    def _ack(self, item: _Message) -> None:
        if item.qos > 0 and not self._stopping:
            self._client.ack(item.mid, item.qos)

    async def _cancel_consumer(self) -> None:
        if self._consumer is not None:
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._consumer
            self._consumer = None
