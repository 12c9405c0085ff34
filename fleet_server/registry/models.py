"""SQLModel tables of the model registry (changed together with migrations/versions/0005_registry.py).

A `RegisteredModel` is a name plus its release policy; each `ModelVersion` is one fp32 ONNX file
(a blob in the OTA blob store) with its lineage, the compile budgets and data sets it is built
with, and where it got to: registered -> compiling -> compiled -> awaiting_approval | released,
or failed / rejected with a reason.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field, SQLModel

from fleet_server.models import UtcDateTime

# Version states (strings, persisted as they are).
REGISTERED = "registered"
COMPILING = "compiling"
COMPILED = "compiled"
AWAITING_APPROVAL = "awaiting_approval"
RELEASED = "released"
REJECTED = "rejected"  # compiled, but worse than its parent beyond the budget
FAILED = "failed"


def _ts() -> Any:  # aware UTC when read back, on SQLite too (the API serializes the offset)
    return Field(default=None, sa_column=Column(UtcDateTime(), nullable=True))


def _json() -> Any:
    return Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class RegisteredModel(SQLModel, table=True):
    __tablename__ = "registered_model"

    name: str = Field(primary_key=True, max_length=128)
    # True: a federated version that compiles inside its budgets is released to its cohort at once.
    auto_release: bool = False
    created_by: str = Field(default="", max_length=128)
    created_at: datetime | None = _ts()


class ModelVersion(SQLModel, table=True):
    __tablename__ = "model_version"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_model_version_name_version"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=128, index=True)
    version: int
    parent_version: int | None = None
    source: str = Field(default="upload", max_length=16)  # upload | federated
    status: str = Field(default=REGISTERED, max_length=24)
    detail: str = Field(default="", max_length=1024)
    artifact_sha256: str = Field(max_length=64)  # the fp32 ONNX model
    # {"profiles": [...], "max_accuracy_drop": 0.01, ..., "batched_inputs": [...], "micro_batch": 8}:
    # the same budgets and compile settings (optional) for every descendant.
    compile_spec: dict[str, Any] = _json()
    # sha256 of blobs: calib (inputs), eval (x, y), golden (input:<name>, labels) + golden_threshold.
    datasets: dict[str, Any] = _json()
    lineage: dict[str, Any] = _json()
    # After compiling: per profile {artifact_sha256, filename, runtime, accuracy, size_bytes}.
    artifacts: dict[str, Any] = _json()
    accuracy: float | None = None  # fp32 accuracy on the eval set, from the compiler report
    releases: dict[str, Any] = _json()  # profile -> {"release_seq", "deployment_id", "devices"}
    created_by: str = Field(default="", max_length=128)
    created_at: datetime | None = _ts()
    updated_at: datetime | None = _ts()
