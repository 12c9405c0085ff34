"""protobuf <-> server domain types (`<thing>_to_proto` / `<thing>_from_proto` pairs).

Device input is validated here, one record at a time, before anything joins a group-commit
batch: every integer that lands in a BIGINT column must fit a signed 64-bit integer, metrics
must be finite, payloads bounded. A record that fails is refused alone with a short reason key
(`RecordRejectedError.reason`), which the caller counts and acks back to the device; the other
records of the same message go on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fleet_server.desired import DesiredState
from fleet_server.ingest import ReportRow, TelemetryRow
from protos.edgeloop.v1 import device_pb2 as pb


def desired_to_proto(desired: DesiredState) -> pb.DesiredState:
    return pb.DesiredState(
        generation=desired.generation,
        models=[
            pb.ModelAssignment(
                slot=m.slot,
                model_name=m.model_name,
                model_version=m.model_version,
                release_id=m.release_id,
                deployment_id=m.deployment_id,
            )
            for m in desired.models
        ],
        settings=pb.AgentSettings(
            report_interval_s=desired.report_interval_s,
            telemetry_batch_max=desired.telemetry_batch_max,
            max_messages_per_s=desired.max_messages_per_s,
        ),
        labels=desired.labels,
        ota_access=pb.OtaAccess(token=desired.ota_token, expires_at_ms=desired.ota_token_expires_at_ms),
    )


_HEALTH = {pb.HEALTH_OK: "ok", pb.HEALTH_DEGRADED: "degraded", pb.HEALTH_FAILING: "failing"}


INT64_MAX = 2**63 - 1


class RecordRejectedError(ValueError):
    """One device record is refused; `reason` is a short counter key (e.g. "seq_out_of_range")."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class Rejected:
    seq: int
    reason: str


def _check_int64(name: str, value: int) -> None:
    if not -INT64_MAX - 1 <= value <= INT64_MAX:
        raise RecordRejectedError(
            f"{name}_out_of_range", f"{name}={value} does not fit a signed 64-bit integer"
        )


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None  # NaN/inf are not JSON


_REPORT_INTS = (
    "sequence",
    "timestamp_ms",
    "applied_generation",
    "telemetry_dropped_total",
    "telemetry_queued",
)
_RESOURCE_INTS = ("mem_total_bytes", "mem_available_bytes", "disk_free_bytes", "uptime_s")


def report_from_proto(msg: pb.DeviceReport, *, transport: str = "grpc") -> ReportRow:
    """`transport` is how it came ("grpc" | "mqtt"); `cert_fingerprint` is the SHA-256 of the
    certificate the device says it uses (a renewed one is promoted when reported in use).

    Raises: RecordRejectedError when an integer does not fit a signed 64-bit column.
    """
    r = msg.resources
    for name in _REPORT_INTS:
        _check_int64(name, getattr(msg, name))
    for name in _RESOURCE_INTS:
        _check_int64(name, getattr(r, name))
    if "\x00" in msg.agent_version or "\x00" in msg.profile or "\x00" in msg.cert_fingerprint:
        raise RecordRejectedError("text_has_nul", "agent_version/profile/cert_fingerprint contain a NUL")
    observed: dict[str, Any] = {
        "sequence": msg.sequence,
        "timestamp_ms": msg.timestamp_ms,
        "agent_version": msg.agent_version[:64],
        "profile": msg.profile[:64],
        "applied_generation": msg.applied_generation,
        "slots": [
            {"slot": s.slot, "model_name": s.model_name, "model_version": s.model_version, "sha256": s.sha256}
            for s in msg.slots
        ],
        "health": _HEALTH.get(msg.health, "unknown"),
        "health_detail": msg.health_detail[:512],
        "resources": {
            "cpu_load_1m": _finite(r.cpu_load_1m),
            "mem_total_bytes": r.mem_total_bytes,
            "mem_available_bytes": r.mem_available_bytes,
            "disk_free_bytes": r.disk_free_bytes,
            "temperature_c": _finite(r.temperature_c),
            "uptime_s": r.uptime_s,
        },
        "telemetry_queued": msg.telemetry_queued,
        "telemetry_dropped_total": msg.telemetry_dropped_total,
    }
    return ReportRow(
        device_id=msg.device_id,
        agent_version=msg.agent_version[:64],
        observed=observed,
        telemetry_dropped_total=msg.telemetry_dropped_total,
        transport=transport,
        cert_fingerprint=msg.cert_fingerprint[:64].lower(),
    )


@dataclass(frozen=True)
class DecodedBatch:
    rows: list[TelemetryRow]
    rejected: list[Rejected]
    nonfinite_metrics: int  # NaN/inf metric values dropped from stored rows (not JSON)


def telemetry_from_proto(msg: pb.TelemetryBatch, *, max_payload_bytes: int) -> DecodedBatch:
    """Split a batch into storable rows and refused records (never raises for a bad record)."""
    rows: list[TelemetryRow] = []
    rejected: list[Rejected] = []
    dropped = 0
    for r in msg.records:
        try:
            row = telemetry_record_from_proto(r, max_payload_bytes=max_payload_bytes)
        except RecordRejectedError as err:
            rejected.append(Rejected(seq=r.seq, reason=err.reason))
            continue
        rows.append(row)
        dropped += len(r.metrics) - len(row.metrics)
    return DecodedBatch(rows=rows, rejected=rejected, nonfinite_metrics=dropped)


def telemetry_record_from_proto(r: pb.TelemetryRecord, *, max_payload_bytes: int) -> TelemetryRow:
    """Raises: RecordRejectedError (seq 0 or over 2^63-1, timestamp out of range, oversized payload).

    Non-finite metric values are dropped from the row (an old agent may send NaN for a sensor it
    lacks); the rest of the record is kept.
    """
    if r.seq == 0:
        raise RecordRejectedError("seq_zero", "telemetry record seq must be >= 1")
    _check_int64("seq", r.seq)
    _check_int64("timestamp_ms", r.timestamp_ms)
    if "\x00" in r.kind:
        raise RecordRejectedError("text_has_nul", "kind contains a NUL character")
    if len(r.payload) > max_payload_bytes:
        raise RecordRejectedError("payload_too_large", f"{len(r.payload)} > {max_payload_bytes} bytes")
    return TelemetryRow(
        seq=r.seq,
        timestamp_ms=r.timestamp_ms,
        kind=r.kind[:64],
        metrics={k: v for k, v in r.metrics.items() if math.isfinite(v)},
        payload=r.payload,
    )
