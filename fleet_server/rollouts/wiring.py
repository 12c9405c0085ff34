"""Builds the rollout engine for the composition root (fleet_server/main.py).

The metric windows come from `fleet_server.rollouts.metrics.device_window_sums` (the live-metrics
stream); without that module the engine runs with `no_metrics` (metric gates wait, then follow the
rollout's `on_no_data`).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Callable

from sqlalchemy import Engine

from fleet_server.audit.port import AuditRecorder
from fleet_server.rollouts.engine import MetricsSource, OtaPort, RolloutEngine, no_metrics
from fleet_server.settings import Settings

logger = logging.getLogger(__name__)


def metrics_source() -> MetricsSource:
    try:
        from fleet_server.rollouts.metrics import device_window_sums  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        logger.warning("rollouts: no live-metrics reader (fleet_server.rollouts.metrics); metric gates wait")
        return no_metrics
    source: MetricsSource = device_window_sums
    return source


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
        metrics=metrics_source(),
        notify=notify,
        holder=holder,
        lease_s=settings.rollout_lease_s,
        tick_s=settings.rollout_tick_s,
    )
