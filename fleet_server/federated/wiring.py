"""Builds the federated pieces for the composition root (`fleet_server.main.create_app`).

One `FleetGrid` per replica, made fleet-wide by a `ReplicaLink` (relay.py); a `RunScheduler`
(scheduler.py) that records runs on any replica and executes them on the `federated-runner` lease
holder, which also fails the runs a dead holder left `running`; the persisted auto-retrain policy
(autoretrain.py), whose trigger runs on the `drift-trigger` lease holder. A single server is the
same thing with one replica: it takes both leases within a poll, and at startup fails the run its
killed predecessor left running (takeover), as `recover()` used to.

`start()` after the caller's event loop runs; `shutdown()` ends the run this replica executes as
failed ("server stopped mid-run"), releases the leases (another replica takes over at once) and
forgets this replica's task streams. A run recorded but not yet claimed stays waiting for the
next holder (another replica, or this server once restarted).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from fleet_server.audit.port import AuditRecorder
from fleet_server.coordination.bus import Bus, build_bus
from fleet_server.coordination.leases import LeaseStore, Singleton
from fleet_server.federated import autoretrain, scheduler
from fleet_server.federated.autoretrain import AutoRetrain
from fleet_server.federated.cohort import CohortFilter, CohortSpec
from fleet_server.federated.grid import FleetGrid
from fleet_server.federated.relay import ReplicaLink
from fleet_server.federated.rootdata import RegistryRootData
from fleet_server.federated.runner import Eligible, FederatedRunner
from fleet_server.federated.scheduler import RunScheduler
from fleet_server.federated.servicer import FederatedServicer
from fleet_server.federated.trigger import DriftRetrainTrigger, Members
from fleet_server.grpc_api.auth import device_authenticator

if TYPE_CHECKING:
    from fleet_server.registry.service import ModelRegistry

logger = logging.getLogger(__name__)


@dataclass
class FederatedRuntime:
    grid: FleetGrid
    servicer: FederatedServicer
    runner: FederatedRunner
    scheduler: RunScheduler
    autoretrain: AutoRetrain
    link: ReplicaLink
    bus: Bus
    own_bus: bool
    singletons: list[Singleton] = field(default_factory=list)

    @property
    def replica_id(self) -> str:
        return self.link.replica_id

    @property
    def trigger(self) -> DriftRetrainTrigger | None:
        """The drift trigger running on this replica (only on the `drift-trigger` lease holder)."""
        return self.autoretrain.trigger

    def trigger_status(self) -> dict[str, Any]:
        """The drift trigger's state (`{"enabled": False}` when auto-retrain is off)."""
        return self.autoretrain.status()

    def start(self) -> None:
        self.link.start(self.grid)
        self.scheduler.serve()
        self.autoretrain.start()
        if self.own_bus:
            self.bus.start()
        for singleton in self.singletons:
            singleton.start()

    def shutdown(self) -> None:
        self.runner.shutdown()  # a run in progress ends failed ("server stopped mid-run")
        for singleton in self.singletons:
            singleton.stop()  # releases the lease: another replica takes over at once
        self.scheduler.close()
        self.autoretrain.stop()
        self.link.stop()
        if self.own_bus:
            self.bus.stop()
        try:
            self.link.forget_mine()
        except Exception:  # the rows die with the replica's heartbeat anyway
            logger.warning("could not delete this replica's task streams", exc_info=True)


def _datasets_of(
    engine: Engine, models: Callable[[], ModelRegistry]
) -> Callable[[str], dict[str, Any] | None]:
    """The `datasets` of a registry model's newest version (None for an unknown model)."""
    from sqlmodel import Session

    def datasets(name: str) -> dict[str, Any] | None:
        with Session(engine) as session:
            version = models().latest(session, name, required=False)
            return dict(version.datasets) if version is not None else None

    return datasets


def build_federated(
    *,
    engine: Engine,
    loop: asyncio.AbstractEventLoop,
    data_dir: Path,
    audit: AuditRecorder,
    replica_id: str = "",
    bus: Bus | None = None,
    leases: LeaseStore | None = None,
    models: Callable[[], ModelRegistry] | None = None,
    blobs: Callable[[str], bytes] | None = None,
    lease_ttl_s: float = 6.0,
    replica_ttl_s: float = 6.0,
    poll_s: float = 1.0,
) -> FederatedRuntime:
    """`bus` None: the runtime builds and owns its own (`build_bus`). `models` returns the model
    registry (built after this), for auto-retrain runs that start from a registry model; with
    `blobs` (the OTA store's hash-checked `blob_bytes`) a run naming a registry model gets that
    model's evaluation set as its root set (robust defences, aggregate validation)."""
    replica_id = replica_id or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
    leases = leases or LeaseStore(engine)
    own_bus, bus = bus is None, bus or build_bus(engine)

    def runner_replica() -> str | None:
        grant = leases.current(scheduler.LEASE)
        return grant.holder if grant is not None else None

    link = ReplicaLink(
        engine=engine, replica_id=replica_id, bus=bus, runner=runner_replica, replica_ttl_s=replica_ttl_s
    )
    grid = FleetGrid(loop=loop, link=link)
    servicer = FederatedServicer(grid=grid, authenticate=device_authenticator(engine))
    runner = FederatedRunner(engine=engine, grid=grid, out_dir=data_dir / "federated", audit=audit)
    runner.replica_id = replica_id
    if models is not None and blobs is not None:
        runner.root_data = RegistryRootData(_datasets_of(engine, models), blobs)

    def eligible_for(saved: dict[str, Any]) -> Eligible | None:
        if "devices" in saved:
            return Members(frozenset(saved["devices"]))
        if "cohort" in saved:
            c = dict(saved["cohort"])
            c["require_conditions"] = tuple(c.get("require_conditions", ()))
            return CohortFilter(engine=engine, spec=CohortSpec(**c), conditions=grid.state_of)
        return None

    sched = RunScheduler(
        engine=engine, runner=runner, leases=leases, bus=bus, replica_id=replica_id, audit=audit,
        eligible_for=eligible_for, poll_s=poll_s,
    )  # fmt: skip
    auto = AutoRetrain(engine=engine, leases=leases, bus=bus, replica_id=replica_id)
    runtime = FederatedRuntime(grid, servicer, runner, sched, auto, link, bus, own_bus)
    from fleet_server.federated.routes import trigger_factory  # routes import this module

    auto.make_trigger = trigger_factory(runtime, engine, models)
    runtime.singletons = [
        Singleton(leases, scheduler.LEASE, replica_id, ttl_s=lease_ttl_s, poll_s=poll_s,
                  on_acquired=sched.on_acquired, on_lost=sched.on_lost),
        Singleton(leases, autoretrain.LEASE, replica_id, ttl_s=lease_ttl_s, poll_s=poll_s,
                  on_acquired=auto.on_acquired, on_lost=auto.on_lost),
    ]  # fmt: skip
    return runtime
