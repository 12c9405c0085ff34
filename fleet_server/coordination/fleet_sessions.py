"""Builds the fleet-wide half of the session registry for main.py: the presence writer
(presence.py), the desired-state/kick fan-out (fanout.py) on a bus of its own, and who refreshes
which device's OTA token: each replica its own gRPC streams; every MQTT device online anywhere by
the holder of the `mqtt-token-refresh` lease (a shared subscription gives each replica only part
of the status messages, and a replica that dies would take its part along).

The fan-out listens on its own bus connection (`build_bus`): the replica's shared bus
(`app.state.coordination.bus`) starts first thing in the lifespan, and a PgBus LISTENs only on
the channels subscribed before it starts. One more PostgreSQL connection per replica.

On SQLite (one process by construction) there is nothing to coordinate: `build_fleet_sessions`
returns None and the registry stays in-process, as before replicas.

Does not own sessions (grpc_api/sessions.py) or the heartbeat (replica.py), which must run for
this replica's gRPC presence rows to count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Engine

from fleet_server.coordination.bus import Bus, build_bus
from fleet_server.coordination.fanout import BusFanout
from fleet_server.coordination.leases import LeaseGrant, LeaseStore, Singleton
from fleet_server.coordination.presence import MQTT, Presence

MQTT_REFRESH_LEASE = "mqtt-token-refresh"


class Receiver(Protocol):
    """What acts on notifications from other replicas (SessionRegistry)."""

    def remote_desired(self, device_ids: list[str]) -> None: ...

    def remote_kick(self, device_id: str, code: str, detail: str) -> None: ...

    def resync(self) -> None: ...

    def streams(self) -> set[str]: ...


@dataclass
class FleetSessions:
    presence: Presence
    fanout: BusFanout
    bus: Bus
    mqtt_refresh: Singleton | None = None
    own_bus: bool = True  # False: the replica's shared bus (coordination/wiring.py) starts and stops it
    _receiver: Receiver | None = None

    def attach(self, receiver: Receiver) -> None:
        """Subscribe `receiver` to the other replicas' notifications; before `start()`."""
        self._receiver = receiver
        self.fanout.attach(desired=receiver.remote_desired, kick=receiver.remote_kick, resync=receiver.resync)

    def token_refresh_targets(self) -> set[str]:
        """The devices whose OTA token this replica re-sends (ota/access.py `refresh_tokens`)."""
        ids = self._receiver.streams() if self._receiver is not None else set()
        if self.mqtt_refresh is not None and self.mqtt_refresh.grant is not None:
            ids |= self.presence.online_by(MQTT)
        return ids

    def start(self) -> None:
        """First presence read (so `online()` is fleet-wide from the start), then the threads."""
        self.presence.start()
        self.fanout.start()
        if self.own_bus:
            self.bus.start()
        if self.mqtt_refresh is not None:
            self.mqtt_refresh.start()

    def stop(self) -> None:
        """Send what is queued, stop listening, write pending presence. Call before the heartbeat
        stops (its stop deletes this replica's rows)."""
        if self.mqtt_refresh is not None:
            self.mqtt_refresh.stop()
        self.fanout.stop()
        if self.own_bus:
            self.bus.stop()
        self.presence.stop()


def _nothing(_grant: LeaseGrant | None = None) -> None:
    """The lease only says who refreshes; the refresh loop reads `grant` at each round."""


def build_fleet_sessions(
    engine: Engine,
    settings: Any,
    replica_id: str,
    *,
    leases: LeaseStore | None = None,
    bus: Bus | None = None,
) -> FleetSessions | None:
    """None on SQLite; on PostgreSQL, presence with `settings.replica_ttl_s`, a fan-out on `bus`
    (the replica's shared one; None: a bus of its own) and (with `leases`) the
    `mqtt-token-refresh` lease, claimed for `settings.lease_ttl_s`."""
    if engine.dialect.name != "postgresql":
        return None
    own_bus, bus = bus is None, bus or build_bus(engine)
    refresh = None
    if leases is not None:
        ttl_s = float(getattr(settings, "lease_ttl_s", 6.0))
        refresh = Singleton(
            leases, MQTT_REFRESH_LEASE, replica_id, ttl_s=ttl_s, on_acquired=_nothing, on_lost=_nothing
        )
    return FleetSessions(
        presence=Presence(engine, replica_id, replica_ttl_s=float(getattr(settings, "replica_ttl_s", 6.0))),
        fanout=BusFanout(bus, replica_id),
        bus=bus,
        mqtt_refresh=refresh,
        own_bus=own_bus,
    )
