"""Builds the certificate lifecycle for a server process from its settings (for main.py).

- the CRL publisher, when `mqtt_crl_file` is set (the broker's `crlfile`, from
  `edgeloop-server mqtt-config`), with the `mqtt_broker_reload` hook ("pidfile:/run/mosquitto.pid"
  or a command such as "systemctl reload mosquitto");
- the `Revoker` with its effects in order: CRL, then (added by the caller once it exists) the
  session registry's kick, then the broker takeover when `mqtt_url` is set;
- the ingest report observer that promotes renewed certificates (and republishes the CRL).

`mqtt_crl_file` and `mqtt_broker_reload` are read with getattr so this works before Settings has them.

With several replicas (`leases` given), the daily CRL refresh runs only on the holder of the
`crl-refresh` lease; a revocation or a certificate promotion still republishes on the replica that
made it. The CRL is rebuilt from the database each time, so writers never disagree on content.
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
from fleet_server.coordination.leases import LeaseGrant, LeaseStore, Singleton
from fleet_server.mqtt.endpoint import BrokerEndpoint
from fleet_server.pki import FleetCA
from fleet_server.settings import Settings

LEASE = "crl-refresh"


@dataclass
class CertLifecycle:
    revoker: Revoker
    crl: CrlPublisher | None
    promotion_observer: Callable[[Connection, Sequence[CertReport]], None]
    leases: LeaseStore | None = None
    holder: str = ""
    lease_ttl_s: float = 6.0
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _lease: Singleton | None = None

    def add_kicker(self, kicker: Kicker) -> None:
        """Kick live sessions after the CRL is out and before the broker takeover."""
        self.revoker.on_revoked.insert(1 if self.crl is not None else 0, kick_with(kicker))

    def start(self) -> None:
        """On the serving loop: bind the publisher and refresh the CRL daily (now, too); with
        `leases`, only while this replica holds the `crl-refresh` lease."""
        if self.crl is None:
            return
        loop = asyncio.get_running_loop()
        self.crl.bind_loop(loop)
        if self.leases is None:
            self._refresh()
            return

        def acquired(_grant: LeaseGrant) -> None:
            loop.call_soon_threadsafe(self._refresh)

        def lost() -> None:
            if not loop.is_closed():
                loop.call_soon_threadsafe(self._cancel)

        ttl_s = self.lease_ttl_s
        self._lease = Singleton(self.leases, LEASE, self.holder, ttl_s=ttl_s, poll_s=min(1.0, ttl_s / 3),
                                on_acquired=acquired, on_lost=lost)  # fmt: skip
        self._lease.start()

    @property
    def refreshing(self) -> bool:
        """Whether this process runs the periodic CRL refresh now."""
        return any(not task.done() for task in self._tasks)

    def _refresh(self) -> None:
        if self.crl is not None and not self.refreshing:
            self._tasks.append(asyncio.create_task(self.crl.refresh_forever()))

    def _cancel(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()

    def stop(self) -> None:
        """Stop refreshing and release the lease (call it on the serving loop)."""
        if self._lease is not None:
            self._lease.stop()
        self._cancel()


def build_cert_lifecycle(
    *,
    engine: Engine,
    ca: FleetCA,
    settings: Settings,
    audit: AuditRecorder | None,
    leases: LeaseStore | None = None,
    holder: str = "",
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
    return CertLifecycle(
        revoker=revoker, crl=crl, promotion_observer=observer, leases=leases, holder=holder,
        lease_ttl_s=settings.lease_ttl_s,
    )  # fmt: skip
