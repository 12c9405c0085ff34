"""Builds the federated pieces for the composition root (`fleet_server.main.create_app`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from fleet_server.federated.grid import FleetGrid
from fleet_server.federated.runner import FederatedRunner
from fleet_server.federated.servicer import FederatedServicer, device_authenticator


@dataclass
class FederatedRuntime:
    grid: FleetGrid
    servicer: FederatedServicer
    runner: FederatedRunner

    def shutdown(self) -> None:
        self.runner.wait(timeout=0.1)


def build_federated(*, engine: Engine, loop: asyncio.AbstractEventLoop, data_dir: Path) -> FederatedRuntime:
    grid = FleetGrid(loop=loop)
    servicer = FederatedServicer(grid=grid, authenticate=device_authenticator(engine))
    runner = FederatedRunner(engine=engine, grid=grid, out_dir=data_dir / "federated")
    return FederatedRuntime(grid=grid, servicer=servicer, runner=runner)
