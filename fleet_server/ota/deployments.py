"""Deployments: a release assigned to devices by signing per-device roles, and reading them back.

Owns deploying (one signed assignment document per device under ``devices/<id>/``, the device's
status row and desired generation, the audit record) and reading a device's current assignment
from its director role (`assignment_for`, what the desired state is built from). Does not
publish releases or store blobs (`releases.py`, `blobs.py`) nor sign anything itself
(`repository.py`).
"""

from __future__ import annotations

import functools
import logging
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlmodel import Session, col, select
from tuf.api.metadata import TargetFile  # type: ignore[attr-defined]

from fleet_server.artifacts.fs import FilesystemStore
from fleet_server.artifacts.port import ArtifactNotFoundError
from fleet_server.audit.chain import Actor, Target
from fleet_server.audit.port import AuditRecorder, record_change
from fleet_server.errors import NotFoundError
from fleet_server.models import Device, utcnow
from fleet_server.ota.keys import KeyRing
from fleet_server.ota.models import OtaDeviceStatus, OtaRelease
from fleet_server.ota.repository import OtaRepository, ThreadLock, canonical_json

if TYPE_CHECKING:
    from fleet_server.ota.releases import OtaService

logger = logging.getLogger(__name__)

SLOT = "default"


@dataclass(frozen=True)
class Assignment:
    slot: str
    model_name: str
    model_version: str
    release_id: str
    deployment_id: str


class Deployments:
    """The deployment half of `OtaService` (a base class): assignments signed into `repo`."""

    repo: OtaRepository
    spool: Path
    audit: AuditRecorder

    def deploy(
        self,
        *,
        session: Session,
        release_seq: int,
        device_ids: list[str],
        actor: Actor | None = None,
        apply_windows: list[dict[str, Any]] | None = None,
    ) -> str:
        """Assign a release to devices (signed per-device roles); returns the deployment id.
        `apply_windows` (a rollout's, JSON as `protos/edgeloop/windows.py` reads it) go into each
        signed assignment: the device switches to the release only inside one.

        Raises:
            NotFoundError: unknown release or device.
        """
        release = session.get(OtaRelease, release_seq)
        if release is None:
            raise NotFoundError(f"release {release_seq} not found")
        devices = [session.get(Device, d) for d in device_ids]
        missing = [d for d, dev in zip(device_ids, devices, strict=True) if dev is None]
        if missing:
            raise NotFoundError(f"unknown devices: {', '.join(missing[:5])}")
        deployment_id = f"dep_{secrets.token_hex(6)}"
        signed: list[tuple[str, TargetFile]] = []
        with tempfile.TemporaryDirectory(dir=self.spool) as tmp:
            for device in devices:
                assert device is not None
                custom = {
                    "edgeloop": {
                        "device_id": device.id,
                        "deployment_id": deployment_id,
                        "release_seq": release_seq,
                        "target": release.target_path,
                        "model_name": release.model_name,
                        "model_version": release.model_version,
                        "slot": SLOT,
                    }
                }
                if apply_windows:
                    custom["edgeloop"]["apply_windows"] = apply_windows
                doc = Path(tmp) / f"{device.id}.json"
                doc.write_bytes(canonical_json(custom))
                signed.append(
                    (device.id, self.repo.add_target_file(f"devices/{device.id}/assignment", doc, custom))
                )
                session.merge(
                    OtaDeviceStatus(
                        device_id=device.id,
                        deployment_id=deployment_id,
                        release_seq=release_seq,
                        updated_at=utcnow(),  # when it was assigned, until the device reports
                    )
                )
                device.desired_generation += 1
                session.add(device)
            self.repo.assign(signed)
        session.commit()
        logger.info(
            "deployment created id=%s release=%d devices=%d", deployment_id, release_seq, len(devices)
        )
        details = {"deployment_id": deployment_id, "devices": len(device_ids), "device_ids": device_ids[:50]}
        record_change(self.audit, actor or Actor.system("ota"), "release.deployed",
                      Target("release", str(release_seq)), details)  # fmt: skip
        return deployment_id

    def statuses(self, *, session: Session, deployment_id: str) -> list[OtaDeviceStatus]:
        stmt = select(OtaDeviceStatus).where(OtaDeviceStatus.deployment_id == deployment_id)
        return list(session.exec(stmt.order_by(col(OtaDeviceStatus.device_id))))


_SERVICES: dict[Path, OtaService] = {}  # OTA directory -> the service this process runs on it


def register_service(directory: Path, service: OtaService) -> None:
    """`assignment_for(directory)` reads through `service` (its store, S3 included) from now on."""
    _SERVICES[directory.resolve()] = service


@functools.lru_cache(maxsize=16)
def _reader(ota_dir: Path) -> OtaRepository:
    return OtaRepository(FilesystemStore(ota_dir), KeyRing(ota_dir / "keys" / "keys.json"), lock=ThreadLock())


def assignment_for(ota: Path | OtaService, device_id: str) -> Assignment | None:
    """The device's current assignment as signed in its director role (None if never assigned).

    `ota` is the service, or the OTA directory of a service this process runs (its store is used,
    S3 included), else a repository folder read directly.
    """
    if isinstance(ota, Path):
        service = _SERVICES.get(ota.resolve())
        repo = service.repo if service is not None else _reader(ota.resolve())
    else:
        repo = ota.repo
    try:
        targets = repo.device_targets(device_id)
    except (ArtifactNotFoundError, ValueError):
        return None
    for info in targets.values():
        ours = info.custom.get("edgeloop", {}) if isinstance(info.custom, dict) else {}
        if ours.get("device_id") == device_id:
            return Assignment(
                slot=str(ours["slot"]),
                model_name=str(ours["model_name"]),
                model_version=str(ours["model_version"]),
                release_id=str(ours["release_seq"]),
                deployment_id=str(ours["deployment_id"]),
            )
    return None
