"""Builds the federated pieces for the composition root (`fleet_server.main.create_app`).

At build time, runs a previous server process left `running` are marked failed (runner.recover).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from fleet_server.audit.port import AuditRecorder
from fleet_server.federated.grid import FleetGrid
from fleet_server.federated.runner import FederatedRunner
from fleet_server.federated.servicer import FederatedServicer
from fleet_server.federated.trigger import DriftRetrainTrigger
from fleet_server.grpc_api.auth import device_authenticator


@dataclass
class FederatedRuntime:
    grid: FleetGrid
    servicer: FederatedServicer
    runner: FederatedRunner
    trigger: DriftRetrainTrigger | None = None

    def set_trigger(self, trigger: DriftRetrainTrigger | None) -> None:
        """Replace (or remove, with None) the drift-triggered retraining policy."""
        if self.trigger is not None:
            self.trigger.stop()
        self.trigger = trigger
        if trigger is not None:
            trigger.start()

    def trigger_status(self) -> dict[str, Any]:
        """The drift trigger's state (`{"enabled": False}` when auto-retrain is off)."""
        return self.trigger.status() if self.trigger is not None else {"enabled": False}

    def shutdown(self) -> None:
        self.set_trigger(None)
        self.runner.shutdown()  # a run in progress ends failed ("server stopped mid-run")


def build_federated(
    *, engine: Engine, loop: asyncio.AbstractEventLoop, data_dir: Path, audit: AuditRecorder
) -> FederatedRuntime:
    grid = FleetGrid(loop=loop)
    servicer = FederatedServicer(grid=grid, authenticate=device_authenticator(engine))
    runner = FederatedRunner(engine=engine, grid=grid, out_dir=data_dir / "federated", audit=audit)
    runner.recover()  # runs a killed server left "running" end as failed, with that reason
    return FederatedRuntime(grid=grid, servicer=servicer, runner=runner)
