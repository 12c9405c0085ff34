"""Builds the certificate lifecycle for a server process from its settings (for main.py).

- the CRL publisher, when `mqtt_crl_file` is set (the broker's `crlfile`, from
  `edgeloop-server mqtt-config`), with the `mqtt_broker_reload` hook ("pidfile:/run/mosquitto.pid"
  or a command such as "systemctl reload mosquitto");
- the `Revoker` with its effects in order: CRL, then (added by the caller once it exists) the
  session registry's kick, then the broker takeover when `mqtt_url` is set;
- the ingest report observer that promotes renewed certificates (and republishes the CRL).

`mqtt_crl_file` and `mqtt_broker_reload` are read with getattr so this works before Settings has them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Connection, Engine

from fleet_server.audit.port import AuditRecorder
from fleet_server.certs.crl import CrlPublisher, reload_hook
from fleet_server.certs.renewal import CertReport, cert_promotion_observer, promotion_observer
from fleet_server.certs.revocation import Kicker, Revoker, kick_with
from fleet_server.certs.takeover import TakeoverKick
from fleet_server.mqtt.endpoint import BrokerEndpoint
from fleet_server.pki import FleetCA
from fleet_server.settings import Settings


@dataclass
class CertLifecycle:
    revoker: Revoker
    crl: CrlPublisher | None
    promotion_observer: Callable[[Connection, Sequence[CertReport]], None]
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def add_kicker(self, kicker: Kicker) -> None:
        """Kick live sessions after the CRL is out and before the broker takeover."""
        self.revoker.on_revoked.insert(1 if self.crl is not None else 0, kick_with(kicker))

    def start(self) -> None:
        """On the serving loop: bind the publisher and refresh the CRL daily (now, too)."""
        if self.crl is not None:
            self.crl.bind_loop(asyncio.get_running_loop())
            self._tasks.append(asyncio.create_task(self.crl.refresh_forever()))

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()


def build_cert_lifecycle(
    *, engine: Engine, ca: FleetCA, settings: Settings, audit: AuditRecorder | None
) -> CertLifecycle:
    crl_file = settings.mqtt_crl_file
    crl = None
    if crl_file is not None:
        crl = CrlPublisher(engine, ca, Path(crl_file), reload_hook(settings.mqtt_broker_reload))
    revoker = Revoker(engine=engine, audit=audit)
    if crl is not None:
        revoker.on_revoked.append(crl.on_revoked)
    endpoint = BrokerEndpoint.from_settings(settings)
    if endpoint is not None:
        revoker.on_revoked.append(TakeoverKick(endpoint))
    observer = promotion_observer(crl.publish_soon) if crl is not None else cert_promotion_observer
    return CertLifecycle(revoker=revoker, crl=crl, promotion_observer=observer)
