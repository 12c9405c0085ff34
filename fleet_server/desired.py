"""Desired state of one device, derived from the registry and server settings.

Carries labels, agent settings and the signed model assignment, versioned by
`Device.desired_generation`, plus a freshly minted OTA access token (not versioned: every push
carries a new one, see `fleet_server.ota.access`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fleet_server.models import Device
from fleet_server.ota.access import access_for
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
    ota_token: str = ""
    ota_token_expires_at_ms: int = 0


def desired_for(device: Device, settings: Settings) -> DesiredState:
    token = access_for(settings.data_dir / "ota", settings.ota_token_ttl_s).mint(device.id, now_s=time.time())
    return DesiredState(
        generation=device.desired_generation,
        report_interval_s=settings.report_interval_s,
        telemetry_batch_max=settings.telemetry_batch_max,
        max_messages_per_s=settings.device_max_messages_per_s,
        labels=dict(device.labels),
        models=_models(device, settings),
        ota_token=token.token,
        ota_token_expires_at_ms=token.expires_at_s * 1000,
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
