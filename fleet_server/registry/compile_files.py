"""A compile job's files: its inputs copied out of the blob store, its outputs stored back as blobs.

Owns building the `CompileJob` of a version (a fresh work folder with the model and the
calibration and evaluation sets, the budgets and compile settings of its spec, the recipes its
parent's artifacts were built with) and adopting a finished build (each profile's artifact, drift
reference and the report stored as blobs, with the metrics the judge reads). Does not run the
compiler (`compile.py`) or decide anything about the version (service.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from fleet_server.ota.releases import OtaService
from fleet_server.registry.compile import CompileJob
from fleet_server.registry.models import ModelVersion
from fleet_server.registry.schemas import COMPILE_SETTINGS


class CompileFiles:
    """The file half of `ModelRegistry` (a base class): blobs through `_ota`, work under `_work`."""

    _ota: OtaService
    _work: Path

    def _parent_recipes(self, session: Session, version: ModelVersion) -> dict[str, str]:
        """The recipe each profile's artifact of the parent was built with: the compiler keeps it
        when it still passes and is as fast (stable numerics on live inputs, smaller deltas)."""
        if version.parent_version is None:
            return {}
        parent = session.exec(
            select(ModelVersion).where(
                ModelVersion.name == version.name, ModelVersion.version == version.parent_version
            )
        ).first()
        if parent is None:
            return {}
        arts = parent.artifacts.items()
        return {p: str(a["recipe"]) for p, a in arts if isinstance(a, dict) and a.get("recipe")}

    def _job(self, version: ModelVersion, prefer: dict[str, str] | None = None) -> CompileJob:
        out = self._work / version.name / f"v{version.version}"
        inputs = out / "inputs"
        shutil.rmtree(out, ignore_errors=True)
        inputs.mkdir(parents=True)
        model = inputs / "model.onnx"
        self._ota.fetch_blob(version.artifact_sha256, model)
        calib, evaluation = inputs / "calib.npz", inputs / "eval.npz"
        self._ota.fetch_blob(version.datasets["calib_sha256"], calib)
        self._ota.fetch_blob(version.datasets["eval_sha256"], evaluation)
        spec = version.compile_spec
        budgets = {k: float(v) for k, v in spec.items() if k not in COMPILE_SETTINGS}
        batched = spec.get("batched_inputs")
        return CompileJob(
            model,
            tuple(spec["profiles"]),
            calib,
            evaluation,
            out / "build",
            budgets,
            dict(prefer or {}),
            batched_inputs=None if batched is None else tuple(str(n) for n in batched),
            micro_batch=None if spec.get("micro_batch") is None else int(spec["micro_batch"]),
            drift_budget_per_10k=None
            if spec.get("drift_budget_per_10k") is None
            else float(spec["drift_budget_per_10k"]),
        )

    def _adopt_artifacts(self, build: Path, report: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        report_sha = self._store_file(build / "report.json")
        for profile, entry in report.get("profiles", {}).items():
            art = entry.get("artifact")
            if not art:
                continue
            chosen: dict[str, Any] = next(
                (c for c in entry.get("candidates", []) if c["recipe"] == entry.get("chosen")), {}
            )
            metrics = chosen.get("metrics") or {}
            drift = next(
                (
                    p
                    for p in (build / profile / "drift_reference.json", build / "drift_reference.json")
                    if p.exists()
                ),
                None,
            )
            out[profile] = {
                "artifact_sha256": self._store_file(build / art["path"]),
                "filename": Path(art["path"]).name,
                "runtime": art.get("runtime", ""),
                "size_bytes": art.get("size_bytes"),
                "recipe": entry.get("chosen"),
                "accuracy": report_float(metrics.get("accuracy")),
                "agreement": report_float(metrics.get("agreement")),
                "report_sha256": report_sha,
                "drift_reference_sha256": self._store_file(drift) if drift is not None else "",
                # the batches quality was judged at and where the micro-batch size came from
                "quality_batch": entry.get("quality_batch"),
            }
        return out

    def _store_bytes(self, data: bytes) -> str:
        upload = self._ota.new_upload()
        try:
            upload.write_bytes(data)
            return self._ota.adopt_blob(upload)[0]
        finally:
            upload.unlink(missing_ok=True)

    def _store_file(self, path: Path) -> str:
        upload = self._ota.new_upload()
        try:
            shutil.copyfile(path, upload)
            return self._ota.adopt_blob(upload)[0]
        finally:
            upload.unlink(missing_ok=True)


def report_float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None
