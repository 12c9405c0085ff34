"""`ModelWindow` -> `edgeloop.v1.ModelMetricsWindow` bytes, at most `MAX_PAYLOAD_BYTES` (issue 12).

The only module that builds the protobuf of a model metrics record. Keeps every value inside what
the fleet server stores (fleet_server/rollouts/metrics.py refuses the record otherwise): strings
cut to their column length, counts clamped to uint32/int64, non-finite floats sent as 0 (-1 for
the scores where -1 means none). The payload bound holds for any number of classes: when the
class counts do not fit, every count is halved (rounding up, so a class seen stays non-zero)
until they do; their proportions are kept, their sum is then smaller than `predictions`, and
`class_counts_scaled` says by how many halvings. Does not accumulate (model_metrics.py) or send.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agent.inference.model_metrics import ModelWindow
from protos.edgeloop.v1 import device_pb2

KIND = "model_metrics"
MAX_PAYLOAD_BYTES = 2048
_UINT32 = (1 << 32) - 1
_INT64 = (1 << 63) - 1
_LIMITS = {"model_name": 128, "model_version": 64, "deployment_id": 64}


@dataclass(frozen=True)
class Provenance:
    """What the daemon adds to a window: where the model came from and how it was judged."""

    deployment_id: str = ""
    drift_score: float = -1.0
    shadow_agreement: float = -1.0
    shadow_samples: int = 0


@dataclass(frozen=True)
class Encoded:
    payload: bytes
    class_counts_scaled: int  # halvings applied to the class counts to fit the payload (0: exact)


def _num(value: float, *, none: float = 0.0, high: float = math.inf) -> float:
    return min(value, high) if math.isfinite(value) and value >= 0 else none


def _text(value: str, field: str) -> str:
    return value.replace("\x00", "")[: _LIMITS[field]]


def encode_window(
    window: ModelWindow, *, window_start_ms: int, window_s: float, provenance: Provenance
) -> Encoded:
    """The serialized record for one model's window (at most MAX_PAYLOAD_BYTES)."""
    sha = window.model.sha256.lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        sha = ""
    msg = device_pb2.ModelMetricsWindow(
        model_name=_text(window.model.name, "model_name") or "unknown",
        model_version=_text(window.model.version, "model_version"),
        model_sha256=sha,
        deployment_id=_text(provenance.deployment_id, "deployment_id"),
        window_start_ms=max(0, min(window_start_ms, _INT64)),
        window_s=max(1, min(86_400, round(window_s))),
        predictions=min(window.predictions, _INT64),
        errors=min(window.errors, _INT64),
        confidence_hist=[min(c, _UINT32) for c in window.confidence_hist],
        confidence_sum=_num(window.confidence_sum),
        confidence_sum_sq=_num(window.confidence_sum_sq),
        latency_p50_ms=_num(window.latency_p50_ms),
        latency_p95_ms=_num(window.latency_p95_ms),
        latency_sum_ms=_num(window.latency_sum_ms),
        latency_sum_sq_ms=_num(window.latency_sum_sq_ms),
        latency_count=min(window.latency_count, _INT64),
        drift_score=_num(provenance.drift_score, none=-1.0),
        shadow_agreement=_num(provenance.shadow_agreement, none=-1.0, high=1.0),
        shadow_samples=max(0, min(provenance.shadow_samples, (1 << 31) - 1)),
    )
    counts = [min(c, _UINT32) for c in window.class_counts[:1000]]
    halvings = 0
    while True:
        msg.ClearField("class_counts")
        msg.class_counts.extend(counts)
        payload = msg.SerializeToString()
        if len(payload) <= MAX_PAYLOAD_BYTES or not any(c > 1 for c in counts):
            break
        counts = [(c + 1) // 2 for c in counts]
        halvings += 1
    if len(payload) > MAX_PAYLOAD_BYTES:  # only with very long multi-byte names: send no class mix
        msg.ClearField("class_counts")
        payload = msg.SerializeToString()
    return Encoded(payload, halvings)
