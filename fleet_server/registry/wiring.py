"""Builds the registry for the composition root and connects it to the federated runner."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sqlalchemy import Engine

from fleet_server.audit.port import AuditRecorder
from fleet_server.coordination.leases import LeaseStore
from fleet_server.federated.runner import FederatedRunner, RunSpec
from fleet_server.ota.releases import OtaService
from fleet_server.registry.compile import Compiler, SubprocessCompiler
from fleet_server.registry.service import ModelRegistry, RolloutStarter
from fleet_server.settings import Settings


def build_registry(
    *,
    engine: Engine,
    ota: OtaService,
    settings: Settings,
    runner: FederatedRunner,
    audit: AuditRecorder,
    compiler: Compiler | None = None,
    notify: Callable[[str], None] | None = None,
    rollouts: RolloutStarter | None = None,
    replica_id: str = "",
) -> ModelRegistry:
    """The started registry, with federated runs that name a model handing their head to it.
    With a `replica_id`, the compile worker runs only on the `registry-compile` lease holder."""
    compiler = compiler or SubprocessCompiler(
        tuple(settings.compiler_command) or SubprocessCompiler.command, settings.compile_timeout_s
    )
    models = ModelRegistry(
        engine=engine,
        ota=ota,
        work_dir=settings.data_dir / "registry",
        compiler=compiler,
        notify=notify,
        audit=audit,
        rollouts=rollouts,
        leases=LeaseStore(engine) if replica_id else None,
        holder=replica_id,
        lease_ttl_s=float(getattr(settings, "lease_ttl_s", 6.0)),
    )

    def hand_off(spec: RunSpec, arrays: dict[str, np.ndarray], lineage: dict[str, object]) -> None:
        models.register_federated(
            name=spec.model,
            parent_version=spec.parent_version or None,
            arrays=arrays,
            lineage={**lineage, "model": spec.model},
        )

    runner.on_complete = hand_off
    models.start()
    return models
