"""Request and response shapes of the registry REST API (validated by pydantic: bad input is a 422)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, Field, field_validator

from fleet_server.api.params import INT32_MAX

_SHA = r"^[0-9a-f]{64}$"
_KEY = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
_INPUT = Annotated[str, Field(min_length=1, max_length=256)]  # an ONNX input name (see _check_names)
_BAD_NAME = re.compile(r"[,\x00-\x1f\x7f]|^\s|\s$")
MAX_MICRO_BATCH = 4096
# compile_spec keys that are not quality budgets
COMPILE_SETTINGS = frozenset({"profiles", "batched_inputs", "micro_batch", "drift_budget_per_10k"})


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
    # Compile settings, kept in the version's compile_spec and inherited with it. Which inputs carry
    # the batch axis, when the model's shapes say it wrong: stamped into every artifact's metadata
    # (edgeloop.batched_inputs); None: read from the model; []: none (a stateful model).
    batched_inputs: list[_INPUT] | None = Field(default=None, max_length=64)
    # Also judge quality at this batch: overrides the profiles' own [serving] micro_batch; 1: batch 1
    # only; None: each profile's own.
    micro_batch: int | None = Field(default=None, ge=1, le=MAX_MICRO_BATCH, strict=True)
    # The shipped drift reference's false-alarm budget (false drift episodes per 10,000 monitored
    # samples the devices' thresholds are calibrated to); None: the monitor's default (0.5).
    drift_budget_per_10k: float | None = Field(default=None, ge=0.01, le=100.0, allow_inf_nan=False)

    @field_validator("budgets")
    @classmethod
    def _budget_keys(cls, budgets: dict[str, float]) -> dict[str, float]:
        reserved = sorted(set(budgets) & COMPILE_SETTINGS)
        if reserved:
            raise ValueError(f"{reserved} are not budgets: give them as top-level fields")
        return budgets

    @field_validator("batched_inputs")
    @classmethod
    def _check_names(cls, names: list[str] | None) -> list[str] | None:
        """Names the compiler's comma-separated --batched-inputs can carry, each once."""
        if names is None:
            return None
        bad = [i for i, n in enumerate(names) if _BAD_NAME.search(n)]
        if bad:  # positions, not the names: a 422 never echoes the input
            raise ValueError(
                f"the names at positions {bad[:10]} cannot be passed on to the compiler: "
                "no comma or control character, no space at either end"
            )
        seen: dict[str, int] = {}
        for i, n in enumerate(names):
            if n in seen:
                raise ValueError(f"positions {seen[n]} and {i} name the same input")
            seen[n] = i
        return names

    def compile_overrides(self) -> dict[str, Any]:
        """The compile settings this request gives (absent ones are left to the model and profiles)."""
        out: dict[str, Any] = {}
        if self.batched_inputs is not None:
            out["batched_inputs"] = list(self.batched_inputs)
        if self.micro_batch is not None:
            out["micro_batch"] = self.micro_batch
        if self.drift_budget_per_10k is not None:
            out["drift_budget_per_10k"] = self.drift_budget_per_10k
        return out

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
