"""The operator console's fleet view: summary counts, filtered and paged devices, per-device
telemetry series and live Server-Sent Events (REST under /api/v1, viewer role)."""

from fleet_server.fleetview.columns import fleetview_columns_observer
from fleet_server.fleetview.events import EventHub
from fleet_server.fleetview.routes import router
from fleet_server.fleetview.wiring import build_fleet_events

__all__ = ["EventHub", "build_fleet_events", "fleetview_columns_observer", "router"]
