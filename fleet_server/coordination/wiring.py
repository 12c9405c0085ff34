"""Builds a replica's coordination parts for main.py: its id, the lease store, the bus and the
heartbeat, started early in the lifespan and stopped last (`app.state.coordination`).

Does not start any singleton job: each capability makes its own `Singleton` from `leases`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from fleet_server.coordination.bus import Bus, build_bus
from fleet_server.coordination.leases import LeaseStore
from fleet_server.coordination.replica import ReplicaHeartbeat, replica_id_for

logger = logging.getLogger(__name__)


@dataclass
class Coordination:
    """What other subsystems use to act as one of several replicas."""

    replica_id: str
    leases: LeaseStore
    bus: Bus
    heartbeat: ReplicaHeartbeat
    lease_ttl_s: float = 6.0

    def start(self) -> None:
        """First heartbeat (raises if the database refuses it), then the bus thread."""
        self.heartbeat.start()
        self.bus.start()

    def stop(self) -> None:
        """Bus first (nothing more to hear), then the heartbeat (deletes this replica's rows)."""
        self.bus.stop()
        self.heartbeat.stop()


def build_coordination(engine: Engine, settings: Any) -> Coordination:
    """From `settings.replica_id`, `lease_ttl_s` and `replica_ttl_s` (getattr defaults: 6 s)."""
    replica_ttl_s = float(getattr(settings, "replica_ttl_s", 6.0))
    replica_id = replica_id_for(settings)
    logger.info("coordination replica=%s dialect=%s", replica_id, engine.dialect.name)
    return Coordination(
        replica_id=replica_id,
        leases=LeaseStore(engine),
        bus=build_bus(engine),
        heartbeat=ReplicaHeartbeat(engine, replica_id, interval_s=replica_ttl_s / 3, ttl_s=replica_ttl_s),
        lease_ttl_s=float(getattr(settings, "lease_ttl_s", 6.0)),
    )
