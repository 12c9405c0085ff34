"""The broker-level kick: connect briefly under a device's client ids so Mosquitto drops its connections.

MQTT gives a client id to one connection at a time; Mosquitto 2.0.11 closes the older one ("Client X
already connected, closing old connection") and has no per-user client-id ACL, so the server's
identity may take over `{id}` and `{id}.fl` (measured in tests/integration/test_broker_security.py).
With `clean_session` the takeover also discards the revoked device's queued messages. Because the
CRL is reloaded *before* the kick, the device's automatic reconnect then fails the TLS handshake.

The only paho import of the certs package. Does not decide who is kicked (revocation.py does).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from fleet_server.mqtt.endpoint import BrokerEndpoint
from protos.edgeloop import mqtt

logger = logging.getLogger(__name__)


class TakeoverKick:
    """`await kick(device_id)`: take over both of the device's client ids, then disconnect."""

    def __init__(self, endpoint: BrokerEndpoint, timeout_s: float = 5.0) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s

    async def __call__(self, device_id: str) -> None:
        ids = [mqtt.client_id(device_id), mqtt.client_id(device_id, federated=True)]
        await asyncio.gather(*(asyncio.to_thread(self._take_over, cid) for cid in ids))

    def _take_over(self, client_id: str) -> None:
        ep = self.endpoint
        done = threading.Event()
        result: list[str] = []
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        ep.configure_tls(client)

        def on_connect(_c: paho.Client, _u: object, _f: object, rc: object, _p: object) -> None:
            result.append(str(rc))
            done.set()

        client.on_connect = on_connect
        try:
            client.connect(ep.host, ep.port, keepalive=10)
            client.loop_start()
            if not done.wait(self.timeout_s):
                raise TimeoutError(
                    f"broker did not answer the takeover of {client_id!r} in {self.timeout_s}s"
                )
        except (OSError, ssl.SSLError) as err:
            raise ConnectionError(f"takeover of {client_id!r} failed: {err}") from err
        finally:
            client.disconnect()
            client.loop_stop()
        if result != ["Success"]:
            raise ConnectionError(f"takeover of {client_id!r} refused by the broker: {result}")
        logger.info("mqtt client id taken over client_id=%s", client_id)
