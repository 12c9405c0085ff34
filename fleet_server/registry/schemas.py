"""Request and response shapes of the registry REST API (validated by pydantic: bad input is a 422)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, Field

from fleet_server.api.params import INT32_MAX

_SHA = r"^[0-9a-f]{64}$"
_KEY = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]


class VersionCreate(BaseModel):
    """A version from blobs already uploaded with `PUT /api/v1/ota/blobs`."""

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")
    artifact_sha256: str = Field(pattern=_SHA)  # fp32 ONNX with a final linear layer
    parent_version: int | None = Field(default=None, ge=1, le=INT32_MAX)
    profiles: list[_KEY] = Field(default_factory=list, max_length=16)
    # Compiler budgets, inherited by every descendant: max_accuracy_drop, min_agreement, ...
    budgets: dict[_KEY, float] = Field(
        default_factory=dict, max_length=32, json_schema_extra={"additionalProperties": False}
    )
    calib_sha256: str = Field(default="", pattern=r"^([0-9a-f]{64})?$")
    eval_sha256: str = Field(default="", pattern=r"^([0-9a-f]{64})?$")
    golden_sha256: str = Field(default="", pattern=r"^([0-9a-f]{64})?$")
    golden_threshold: float = Field(default=0.0, ge=0.0, le=1.0)
    warmup_sha256: str = Field(default="", pattern=r"^([0-9a-f]{64})?$")  # warm-up sample (.npz)
    lineage: dict[str, Any] = Field(default_factory=dict)

    def datasets(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "calib_sha256": self.calib_sha256,
            "eval_sha256": self.eval_sha256,
            "golden_sha256": self.golden_sha256,
            "warmup_sha256": self.warmup_sha256,
        }
        if self.golden_sha256:
            out["golden_threshold"] = self.golden_threshold
        return out


class PolicyUpdate(BaseModel):
    auto_release: bool


class Approval(BaseModel):
    devices: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(
        default=None, max_length=10000
    )


class VersionPublic(BaseModel):
    name: str
    version: int
    parent_version: int | None
    source: str
    status: str
    detail: str
    artifact_sha256: str
    compile_spec: dict[str, Any]
    datasets: dict[str, Any]
    lineage: dict[str, Any]
    artifacts: dict[str, Any]
    accuracy: float | None
    releases: dict[str, Any]
    created_by: str
    created_at: AwareDatetime | None
    updated_at: AwareDatetime | None
