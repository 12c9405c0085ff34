"""Builds the fleet-wide half of the session registry for main.py: the presence writer
(presence.py) and the desired-state/kick fan-out (fanout.py) on a bus of its own.

The fan-out listens on its own bus connection (`build_bus`): the replica's shared bus
(`app.state.coordination.bus`) starts first thing in the lifespan, and a PgBus LISTENs only on
the channels subscribed before it starts. One more PostgreSQL connection per replica.

On SQLite (one process by construction) there is nothing to coordinate: `build_fleet_sessions`
returns None and the registry stays in-process, as before replicas.

Does not own sessions (grpc_api/servicer.py) or the heartbeat (replica.py), which must run for
this replica's gRPC presence rows to count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Engine

from fleet_server.coordination.bus import Bus, build_bus
from fleet_server.coordination.fanout import BusFanout
from fleet_server.coordination.presence import Presence


class Receiver(Protocol):
    """What acts on notifications from other replicas (SessionRegistry)."""

    def remote_desired(self, device_ids: list[str]) -> None: ...

    def remote_kick(self, device_id: str, code: str, detail: str) -> None: ...

    def resync(self) -> None: ...


@dataclass
class FleetSessions:
    presence: Presence
    fanout: BusFanout
    bus: Bus

    def attach(self, receiver: Receiver) -> None:
        """Subscribe `receiver` to the other replicas' notifications; before `start()`."""
        self.fanout.attach(desired=receiver.remote_desired, kick=receiver.remote_kick, resync=receiver.resync)

    def start(self) -> None:
        """First presence read (so `online()` is fleet-wide from the start), then the threads."""
        self.presence.start()
        self.fanout.start()
        self.bus.start()

    def stop(self) -> None:
        """Send what is queued, stop listening, write pending presence. Call before the heartbeat
        stops (its stop deletes this replica's rows)."""
        self.fanout.stop()
        self.bus.stop()
        self.presence.stop()


def build_fleet_sessions(engine: Engine, settings: Any, replica_id: str) -> FleetSessions | None:
    """None on SQLite; on PostgreSQL, presence with `settings.replica_ttl_s` and a fan-out on its own bus."""
    if engine.dialect.name != "postgresql":
        return None
    bus = build_bus(engine)
    return FleetSessions(
        presence=Presence(engine, replica_id, replica_ttl_s=float(getattr(settings, "replica_ttl_s", 6.0))),
        fanout=BusFanout(bus, replica_id),
        bus=bus,
    )
