"""TUF verification of what this device should install: `Trust.resolve() -> Plan | None`.

Owns the ngclient `Updater` (a fresh one per check: refresh runs once per instance) over our
`HttpFetcher`, the trusted metadata cache, and the translation of a signed assignment into a
`Plan`: the device's own role ``device-<id>`` must list ``devices/<id>/assignment`` naming this
device, and the release target it points at must be signed by the top-level targets role (the
director can only sign ``devices/`` paths). Every refusal is an IntegrityError (bad or stale
metadata, or more bytes than the trusted metadata allows) or TransportError (repository
unreachable), translated from tuf's exceptions here.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import TargetFile  # type: ignore[attr-defined]
from tuf.ngclient.config import UpdaterConfig
from tuf.ngclient.updater import Updater

from agent.errors import IntegrityError, TransportError
from agent.ota.fetcher import HttpFetcher
from protos.edgeloop import windows

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TargetRef:
    """A verified target: where to fetch it and what its bytes must be."""

    path: str
    url: str
    length: int
    sha256: str


@dataclass(frozen=True)
class Plan:
    """A verified assignment, persisted in the update record (plain JSON)."""

    deployment_id: str
    release_seq: int
    model_name: str
    model_version: str
    artifact: TargetRef
    manifest: TargetRef | None
    golden: TargetRef | None
    golden_threshold: float
    gates: dict[str, float] = field(default_factory=dict)
    profiles: list[str] = field(default_factory=list)  # empty: any device profile
    compressed: TargetRef | None = None  # the artifact as xz, when the release ships it
    drift_reference: TargetRef | None = None  # drift_reference.json staged beside the model
    warmup: TargetRef | None = None  # warm-up sample (.npz) the candidate is warmed up with
    # The rollout's apply windows (signed in the assignment); empty: switch at once.
    apply_windows: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Plan:
        refs = {
            k: TargetRef(**raw[k]) if raw.get(k) else None
            for k in ("artifact", "manifest", "golden", "compressed", "drift_reference", "warmup")
        }
        artifact = refs.pop("artifact")
        assert artifact is not None
        return cls(**{**raw, **refs, "artifact": artifact})


class Trust:
    """The device's view of the OTA repository."""

    def __init__(
        self, *, device_id: str, metadata_dir: Path, base_url: str, fetcher: HttpFetcher, bootstrap_root: Path
    ) -> None:
        self._device_id = device_id
        self._dir = metadata_dir
        self._base = base_url.rstrip("/")
        self._fetcher = fetcher
        self._bootstrap = bootstrap_root

    def _updater(self) -> Updater:
        self._dir.mkdir(parents=True, exist_ok=True)
        if not (self._dir / "root.json").exists():
            shutil.copyfile(self._bootstrap, self._dir / "root.json")
        return Updater(
            metadata_dir=str(self._dir),
            metadata_base_url=f"{self._base}/metadata/",
            target_base_url=f"{self._base}/targets/",
            fetcher=self._fetcher,
            config=UpdaterConfig(max_delegations=4),
            bootstrap=None,
        )

    def resolve(self) -> Plan | None:
        """Refresh metadata and return this device's signed assignment (None: nothing assigned).

        Raises:
            IntegrityError: metadata failed verification (signature, expiry, rollback, length...).
            TransportError: the repository could not be reached.
        """
        try:
            updater = self._updater()
            updater.refresh()
            return self._plan(updater)
        except tuf_exc.DownloadLengthMismatchError as err:  # endless data, or a swapped file: an attack
            raise IntegrityError(f"OTA metadata refused: {type(err).__name__}: {err}") from err
        except tuf_exc.DownloadError as err:
            raise TransportError(f"OTA repository unreachable: {err}") from err
        except tuf_exc.RepositoryError as err:
            raise IntegrityError(f"OTA metadata refused: {type(err).__name__}: {err}") from err
        except OSError as err:
            raise TransportError(f"OTA metadata cache unusable: {err}") from err

    def _plan(self, updater: Updater) -> Plan | None:
        assignment = updater.get_targetinfo(f"devices/{self._device_id}/assignment")
        if assignment is None:
            return None
        ours = _edgeloop(assignment)
        if ours.get("device_id") != self._device_id:
            raise IntegrityError("assignment names another device")
        release = updater.get_targetinfo(str(ours["target"]))
        if release is None:
            raise IntegrityError(f"assigned target {ours['target']} is not a signed release")
        spec = _edgeloop(release)
        if int(spec.get("release_seq", -1)) != int(ours["release_seq"]):
            raise IntegrityError("assignment and release disagree on the release sequence")
        golden = spec.get("golden") or {}
        return Plan(
            deployment_id=str(ours["deployment_id"]),
            release_seq=int(ours["release_seq"]),
            model_name=str(spec["model_name"]),
            model_version=str(spec["model_version"]),
            artifact=self._ref(release),
            manifest=self._optional(updater, spec.get("manifest")),
            golden=self._optional(updater, golden.get("path")),
            golden_threshold=float(golden.get("threshold", 0.0)),
            gates={str(k): float(v) for k, v in (spec.get("gates") or {}).items()},
            profiles=[str(p) for p in spec.get("profiles") or []],
            compressed=self._optional(updater, spec.get("compressed")),
            drift_reference=self._optional(updater, spec.get("drift_reference")),
            warmup=self._optional(updater, spec.get("warmup")),
            apply_windows=_apply_windows(ours.get("apply_windows")),
        )

    def _optional(self, updater: Updater, path: object) -> TargetRef | None:
        if not path:
            return None
        info = updater.get_targetinfo(str(path))
        if info is None:
            raise IntegrityError(f"release file {path} is not signed")
        return self._ref(info)

    def _ref(self, info: TargetFile) -> TargetRef:
        directory, _, name = info.path.rpartition("/")
        sha = info.hashes["sha256"]
        return TargetRef(info.path, f"{self._base}/targets/{directory}/{sha}.{name}", info.length, sha)


def _edgeloop(info: TargetFile) -> dict[str, Any]:
    custom = info.custom if isinstance(info.custom, dict) else {}
    ours = custom.get("edgeloop")
    if not isinstance(ours, dict):
        raise IntegrityError(f"target {info.path} carries no edgeloop fields")
    return ours


def _apply_windows(raw: object) -> list[dict[str, Any]]:
    """The assignment's apply windows, checked here so a malformed one refuses the assignment."""
    if not raw:
        return []
    if not isinstance(raw, list) or not all(isinstance(w, dict) for w in raw):
        raise IntegrityError("assignment apply_windows is not a list of windows")
    try:
        windows.parse(raw)
    except windows.WindowError as err:
        raise IntegrityError(f"assignment apply_windows refused: {err}") from err
    return [dict(w) for w in raw]
