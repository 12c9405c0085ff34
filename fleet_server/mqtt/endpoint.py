"""Where the fleet server's MQTT broker is and which identity the server shows it, from settings.

One reading of `mqtt_url` and the server's MQTT TLS files, for every server connection to the
broker: the bridge (bridge.py) and the revocation takeover (certs/takeover.py). No paho import:
`configure_tls` takes the paho client it is given.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fleet_server.settings import Settings


@dataclass(frozen=True)
class BrokerEndpoint:
    host: str
    port: int
    tls: bool = True
    ca_file: Path | None = None  # the fleet CA (brokerconf.py writes it beside the broker config)
    cert_file: Path | None = None  # the server's MQTT identity (brokerconf.py: server-client.pem)
    key_file: Path | None = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    @classmethod
    def from_settings(cls, settings: Settings) -> BrokerEndpoint | None:
        """None when MQTT is off (`mqtt_url` empty); `mqtts://` = TLS (port 8883 by default)."""
        if not settings.mqtt_url:
            return None
        url = urlsplit(settings.mqtt_url)
        tls = url.scheme == "mqtts"
        return cls(
            host=url.hostname or "127.0.0.1",
            port=url.port or (8883 if tls else 1883),
            tls=tls,
            ca_file=settings.mqtt_ca_file,
            cert_file=settings.mqtt_client_cert,
            key_file=settings.mqtt_client_key,
        )

    def configure_tls(self, client: Any) -> None:
        """Mutual TLS on a paho client (nothing for a plain endpoint); the broker's chain is verified."""
        if self.tls:
            client.tls_set(
                ca_certs=str(self.ca_file) if self.ca_file else None,
                certfile=str(self.cert_file) if self.cert_file else None,
                keyfile=str(self.key_file) if self.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
