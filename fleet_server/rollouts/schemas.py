"""Request and response shapes of the rollout REST API, and the gate configuration a rollout stores.

Bounds live here (pydantic: a bad value is a 422 with the field); checks that need the database
(releases, devices, overlapping rollouts) are the engine's (`engine.RolloutEngine.create`).
`GateConfig` is stored as JSON on the rollout row and read back by the engine with its defaults,
so a rollout keeps the configuration it was created with.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from fleet_server.api.params import INT64_MAX, Labels, NoNul
from fleet_server.rollouts.windows import Windows

_PROFILE = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
_LABEL_KEY = Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9._/-]{0,62}$")]
MetricGate = Literal[
    "confidence_mean", "error_rate", "latency_mean", "confidence_hist", "class_mix", "drift_score"
]
ALL_METRIC_GATES: tuple[MetricGate, ...] = (
    "confidence_mean",
    "error_rate",
    "latency_mean",
    "confidence_hist",
    "class_mix",
    "drift_score",
)


class GateConfig(BaseModel):
    """Gates of every batch. Install failures (failed, refused, rolled back on the device, and silent
    past `silent_timeout_s`) against `max_failure_rate`; then, once `min_devices` of the batch have
    reported for `min_window_s`, canary vs control on each gate in `metrics` with the family-wise
    `alpha` split evenly across them (Bonferroni), looked at most every `look_interval_s`, at most
    `max_looks` times (alpha spending of the histogram tests). A batch passes at the first look where
    every gate shows non-inferiority (no worse than control within its margin), else after
    `max_looks` looks in which no gate showed harm."""

    model_config = ConfigDict(extra="forbid")

    max_failure_rate: float = Field(default=0.1, ge=0.0, le=1.0)
    silent_timeout_s: float = Field(default=600.0, gt=0, le=7 * 24 * 3600)
    rollback_timeout_s: float = Field(default=900.0, gt=0, le=7 * 24 * 3600)
    metrics: list[MetricGate] = Field(default_factory=lambda: list(ALL_METRIC_GATES), max_length=6)
    alpha: float = Field(default=0.05, gt=0.0, lt=0.5)
    min_devices: int = Field(default=5, ge=1, le=100_000)
    min_samples: int = Field(default=100, ge=1, le=10**9)
    min_window_s: float = Field(default=60.0, ge=0, le=7 * 24 * 3600)
    look_interval_s: float = Field(default=30.0, ge=0, le=24 * 3600)
    max_looks: int = Field(default=10, ge=1, le=1000)
    # Give up waiting for metrics after this long: the gates pass on installs alone ("pass") or
    # the rollout breaches ("breach").
    max_wait_s: float = Field(default=3600.0, gt=0, le=30 * 24 * 3600)
    on_no_data: Literal["pass", "breach"] = "pass"
    confidence_margin: float = Field(default=0.02, ge=0.0, le=1.0)  # absolute drop in mean top-1
    error_margin: float = Field(default=0.01, ge=0.0, le=1.0)  # absolute rise in error rate
    latency_margin: float = Field(default=0.25, ge=0.0, le=100.0)  # relative rise of mean latency
    drift_margin: float = Field(default=0.05, ge=0.0, le=1e6)
    hist_min_effect: float = Field(default=0.05, ge=0.0, le=1.0)  # total variation distance
    # The smallest p a permutation test can give is 1/(permutations+1): it must be below the per-look
    # alpha (alpha / gates / max_looks = 0.05 / 6 / 10 = 8.3e-4 by default) or a histogram gate can
    # never fail (with 1,000 and 20 looks it could not: found by the rollout benchmark).
    permutations: int = Field(default=5000, ge=99, le=20_000)


class Selector(BaseModel):
    model_config = ConfigDict(extra="forbid")

    labels: Labels = Field(default_factory=dict)
    profiles: list[_PROFILE] = Field(default_factory=list, max_length=32)
    # Only these devices (still filtered by labels and profiles); empty: every matching device.
    devices: list[Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=NoNul)]] = Field(
        default_factory=list, max_length=100_000
    )


class BatchPlan(BaseModel):
    """Cumulative `percents` ending at 100 (e.g. [1, 10, 50, 100]) or `counts` per batch."""

    model_config = ConfigDict(extra="forbid")

    percents: list[Annotated[float, Field(gt=0, le=100)]] = Field(default_factory=list, max_length=100)
    counts: list[Annotated[int, Field(ge=1, le=1_000_000)]] = Field(default_factory=list, max_length=100)
    min_per_batch: int = Field(default=1, ge=1, le=1_000_000)
    seed: str = Field(default="", max_length=64, pattern=NoNul)
    budget: dict[_LABEL_KEY, Annotated[float, Field(gt=0, le=100)]] = Field(
        default_factory=dict, max_length=16, json_schema_extra={"additionalProperties": False}
    )


class RolloutCreate(BaseModel):
    """A rollout of `releases` (one per device profile) to the devices `selector` matches."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=128, pattern=NoNul)
    releases: list[Annotated[int, Field(ge=1, le=INT64_MAX)]] = Field(min_length=1, max_length=16)
    selector: Selector = Field(default_factory=Selector)
    batches: BatchPlan = Field(default_factory=lambda: BatchPlan(percents=[1, 10, 50, 100]))
    gates: GateConfig = Field(default_factory=GateConfig)
    on_breach: Literal["pause", "rollback"] = "pause"
    # Download windows: batches are assigned only while one is open; apply windows: devices switch
    # only inside one (sent in the signed assignment). Stored in the row's batch_spec["windows"].
    windows: Windows = Field(default_factory=Windows)
    start: bool = True  # False: stays a draft until POST .../start


class RolloutPolicy(BaseModel):
    """How a registered model's approved or auto-released versions roll out (stored per model)."""

    model_config = ConfigDict(extra="forbid")

    batches: BatchPlan = Field(default_factory=lambda: BatchPlan(percents=[100]))
    gates: GateConfig = Field(default_factory=GateConfig)
    on_breach: Literal["pause", "rollback"] = "pause"


class RolloutPolicyPublic(RolloutPolicy):
    model_name: str
    stored: bool  # False: the default policy (one batch of every device, install gate)


class Action(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="", max_length=512, pattern=NoNul)


class GateResultPublic(BaseModel):
    batch: int
    look: int
    gate: str
    verdict: str
    statistic: float
    p_value: float
    e_value: float | None
    threshold: float
    effect: float
    samples_canary: int
    samples_control: int
    devices_canary: int
    devices_control: int
    detail: str
    evaluated_at: AwareDatetime | None
    value_canary: float | None = None  # canary vs control, per look (see gates.GateResult)
    value_control: float | None = None


class BatchPublic(BaseModel):
    index: int
    size: int
    assigned_at: AwareDatetime | None
    settled_at: AwareDatetime | None
    looks: int
    deployments: dict[str, str]
    devices: dict[str, int]  # status -> count


class DevicePublic(BaseModel):
    device_id: str
    batch: int
    status: str
    detail: str
    profile: str
    release_seq: int | None
    deployment_id: str
    previous_release_seq: int | None
    rollback_deployment_id: str
    updated_at: AwareDatetime | None


class RolloutPublic(BaseModel):
    id: str
    name: str
    state: str
    batch: int
    batches: int
    on_breach: str
    reason: str
    transition: int
    releases: list[dict[str, Any]]
    selector: dict[str, Any]
    batch_spec: dict[str, Any]
    gates: dict[str, Any]
    rollback: dict[str, Any]
    devices: dict[str, int]  # status -> count over every targeted device
    created_by: str
    created_at: AwareDatetime | None
    updated_at: AwareDatetime | None


class RolloutDetail(RolloutPublic):
    plan: list[BatchPublic]
    latest_gates: list[GateResultPublic]  # the newest look of the current batch
    excluded: dict[str, int] = Field(default_factory=dict)
