"""Bounds of a federated run's settings, written once for the REST schema and the runner.

Every number an operator (or the drift trigger) can set on a run has a finite range here: the
REST models (routes.py) advertise and enforce them with pydantic before a handler runs, and
`FederatedRunner.start` checks a `RunSpec` against the same bounds (`check_spec`), so a run
started from code cannot hold a value the API would refuse. The initial model's size is bounded
before anything is allocated (`head_bytes`).

Why these numbers: a round longer than a day, or a model larger than a device may send back
(`GridLimits.max_result_bytes`, 64 MiB), cannot finish; DP noise below 0.01 makes the accounted
epsilon meaningless (and overflows its arithmetic below ~1e-154), above 100 leaves no signal;
SecAgg's fixed-point scale needs its clip within 1e-4..1e4 to neither wrap nor round to zero.
Does not own per-device limits (grid.py `GridLimits`) or strategy names (strategy.py).
"""

from __future__ import annotations

import math
from dataclasses import fields, is_dataclass
from typing import TYPE_CHECKING

from fleet_server.errors import InvalidRequestError

if TYPE_CHECKING:
    from fleet_server.federated.runner import RunSpec

MAX_ROUNDS = 1000
MAX_NODES = 10_000
MIN_ROUND_TIMEOUT_S = 0.1
MAX_ROUND_TIMEOUT_S = 86_400.0  # one day per round; a longer run is cancelled, not waited for
MAX_NORM_BOUND = 1e6
MIN_SECAGG_CLIP, MAX_SECAGG_CLIP = 1e-4, 1e4
MIN_DP_NOISE, MAX_DP_NOISE = 0.01, 100.0  # 0 = DP off; anything else within this range
MIN_DP_CLIP, MAX_DP_CLIP = 1e-6, 1e6
MIN_DP_DELTA, MAX_DP_DELTA = 1e-12, 0.1
MAX_LR = 100.0
MAX_LOCAL_EPOCHS = 100
MAX_FEATURES = 1_000_000
MAX_CLASSES = 100_000
MAX_HEAD_BYTES = 64 * 2**20  # = GridLimits.max_result_bytes: a device could not send a larger head back
MAX_LABELS = 32
MAX_CONDITIONS = 16
MIN_TRIGGER_INTERVAL_S, MAX_TRIGGER_INTERVAL_S = 1.0, 86_400.0


def head_bytes(features: int, classes: int) -> int:
    """Bytes of a zero softmax head (float32 `w` features x classes and `b` classes)."""
    return 4 * (features * classes + classes)


def check_head(features: int, classes: int) -> None:
    """Raises: InvalidRequestError when the head would exceed MAX_HEAD_BYTES (checked, not allocated)."""
    size = head_bytes(features, classes)
    if size > MAX_HEAD_BYTES:
        raise InvalidRequestError(
            f"a {features} x {classes} head is {size} bytes; at most {MAX_HEAD_BYTES} "
            "(a device could not send a larger update back)"
        )


def check_interval(interval_s: float) -> None:
    """Raises: InvalidRequestError unless the trigger interval is finite and within bounds."""
    if not (math.isfinite(interval_s) and MIN_TRIGGER_INTERVAL_S <= interval_s <= MAX_TRIGGER_INTERVAL_S):
        raise InvalidRequestError(
            f"interval_s must be a number of seconds in [{MIN_TRIGGER_INTERVAL_S}, {MAX_TRIGGER_INTERVAL_S}],"
            f" got {interval_s!r}"
        )


def check_spec(spec: RunSpec) -> None:
    """The runner's own check of a spec against the bounds above (what the REST schema enforces).

    Raises: InvalidRequestError naming the first field out of range.
    """
    _finite(spec)
    s = spec.strategy
    checks: list[tuple[bool, str]] = [
        (1 <= spec.num_rounds <= MAX_ROUNDS, f"rounds must be in [1, {MAX_ROUNDS}]"),
        (1 <= s.min_nodes <= MAX_NODES, f"min_nodes must be in [1, {MAX_NODES}]"),
        (0 < s.fraction <= 1, "fraction must be in (0, 1]"),
        (0 <= s.malicious < max(s.min_nodes, 1), "malicious must be below min_nodes"),
        (
            MIN_ROUND_TIMEOUT_S <= spec.round_timeout_s <= MAX_ROUND_TIMEOUT_S,
            f"round_timeout_s must be in [{MIN_ROUND_TIMEOUT_S}, {MAX_ROUND_TIMEOUT_S}]",
        ),
        (0 <= spec.norm_bound <= MAX_NORM_BOUND, f"norm_bound must be in [0, {MAX_NORM_BOUND}]"),
        (
            MIN_SECAGG_CLIP <= spec.secagg.clip <= MAX_SECAGG_CLIP,
            f"secagg_clip must be in [{MIN_SECAGG_CLIP}, {MAX_SECAGG_CLIP}]",
        ),
        (
            spec.dp_noise_multiplier == 0 or MIN_DP_NOISE <= spec.dp_noise_multiplier <= MAX_DP_NOISE,
            f"dp_noise_multiplier must be 0 (off) or in [{MIN_DP_NOISE}, {MAX_DP_NOISE}]",
        ),
        (MIN_DP_CLIP <= spec.dp_clip <= MAX_DP_CLIP, f"dp_clip must be in [{MIN_DP_CLIP}, {MAX_DP_CLIP}]"),
        (
            MIN_DP_DELTA <= spec.dp_delta <= MAX_DP_DELTA,
            f"dp_delta must be in [{MIN_DP_DELTA}, {MAX_DP_DELTA}]",
        ),
        (
            s.name.lower() != "dp-fedavg" or MIN_DP_NOISE <= s.dp_noise_multiplier <= MAX_DP_NOISE,
            f"dp-fedavg needs a noise multiplier in [{MIN_DP_NOISE}, {MAX_DP_NOISE}]",
        ),
        (
            s.name.lower() != "dp-fedavg" or MIN_DP_CLIP <= s.dp_clip <= MAX_DP_CLIP,
            f"dp-fedavg needs a clip in [{MIN_DP_CLIP}, {MAX_DP_CLIP}]",
        ),
    ]
    lr = spec.train_config.get("lr", 0.1)
    epochs = spec.train_config.get("local-epochs", 1)
    checks.append((isinstance(lr, int | float) and 0 < lr <= MAX_LR, f"lr must be in (0, {MAX_LR}]"))
    checks.append(
        (
            isinstance(epochs, int) and 1 <= epochs <= MAX_LOCAL_EPOCHS,
            f"local_epochs must be in [1, {MAX_LOCAL_EPOCHS}]",
        )
    )
    for ok, message in checks:
        if not ok:
            raise InvalidRequestError(message)


def _finite(obj: object, path: str = "") -> None:
    """Every float in a (nested) dataclass or dict is finite: nan/inf would reach the devices."""
    items: list[tuple[str, object]]
    if is_dataclass(obj) and not isinstance(obj, type):
        items = [(f.name, getattr(obj, f.name)) for f in fields(obj)]
    elif isinstance(obj, dict):
        items = [(str(k), v) for k, v in obj.items()]
    else:
        return
    for name, value in items:
        where = f"{path}.{name}" if path else name
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidRequestError(f"{where} must be a finite number, got {value!r}")
        _finite(value, where)
