"""Builds the rollout engine for the composition root (fleet_server/main.py).

The metric windows come from `fleet_server.rollouts.metrics.device_window_sums` (written by the
ingest observer from the devices' model_metrics records).
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable

from sqlalchemy import Connection, Engine

from fleet_server.audit.port import AuditRecorder
from fleet_server.ingest import TelemetryObserver, TelemetryRow
from fleet_server.rollouts.engine import OtaPort, RolloutEngine
from fleet_server.rollouts.metrics import device_window_sums
from fleet_server.settings import Settings


def poke_on_ota_reports(engine: Callable[[], RolloutEngine | None]) -> TelemetryObserver:
    """An ingest observer that wakes the engine when a flush carries OTA reports, so a batch
    settles (or breaches) on the next flush rather than on the next tick. Never raises."""

    def observe(conn: Connection, rows: list[tuple[str, TelemetryRow]]) -> None:
        rollouts = engine()
        if rollouts is not None and any(row.kind == "ota" for _, row in rows):
            rollouts.poke()

    return observe


def build_rollouts(
    *,
    engine: Engine,
    ota: OtaPort,
    audit: AuditRecorder,
    settings: Settings,
    notify: Callable[[str], None] | None = None,
) -> RolloutEngine:
    """The engine (not started: the lifespan starts and stops its loop)."""
    holder = f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(3)}"
    return RolloutEngine(
        engine=engine,
        ota=ota,
        audit=audit,
        metrics=device_window_sums,
        notify=notify,
        holder=holder,
        lease_s=settings.rollout_lease_s,
        tick_s=settings.rollout_tick_s,
    )
