"""Desired state of one device, derived from the registry and server settings.

Later issues add model assignments (rollouts) here; for now it carries labels and agent
settings, versioned by `Device.desired_generation`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fleet_server.models import Device
from fleet_server.ota.releases import assignment_for
from fleet_server.settings import Settings


@dataclass(frozen=True)
class ModelAssignment:
    slot: str
    model_name: str
    model_version: str
    release_id: str = ""
    deployment_id: str = ""


@dataclass(frozen=True)
class DesiredState:
    generation: int
    report_interval_s: int
    telemetry_batch_max: int
    max_messages_per_s: int
    labels: dict[str, str] = field(default_factory=dict)
    models: tuple[ModelAssignment, ...] = ()


def desired_for(device: Device, settings: Settings) -> DesiredState:
    return DesiredState(
        generation=device.desired_generation,
        report_interval_s=settings.report_interval_s,
        telemetry_batch_max=settings.telemetry_batch_max,
        max_messages_per_s=settings.device_max_messages_per_s,
        labels=dict(device.labels),
        models=_models(device, settings),
    )


def _models(device: Device, settings: Settings) -> tuple[ModelAssignment, ...]:
    """The model assignment signed into the device's OTA director role, if any."""
    found = assignment_for(settings.data_dir / "ota", device.id)
    if found is None:
        return ()
    return (
        ModelAssignment(
            slot=found.slot,
            model_name=found.model_name,
            model_version=found.model_version,
            release_id=found.release_id,
            deployment_id=found.deployment_id,
        ),
    )
