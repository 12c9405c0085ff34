"""Builds the fleet view's live part for the composition root (fleet_server/main.py).

`build_fleet_events` makes the process's one EventHub over the engine and the SessionRegistry;
main.py stores it as `app.state.fleet_events` and awaits `close()` at shutdown (before uvicorn
waits for open responses, so the streams end instead of holding the shutdown).
"""

from __future__ import annotations

from sqlalchemy import Engine

from fleet_server.fleetview.events import EventHub, read_state
from fleet_server.grpc_api.servicer import SessionRegistry


def build_fleet_events(
    *, engine: Engine, registry: SessionRegistry, interval_s: float = 1.0, ping_s: float = 15.0
) -> EventHub:
    return EventHub(read=read_state(engine), online=registry.online, interval_s=interval_s, ping_s=ping_s)
