"""protobuf <-> server domain types (`<thing>_to_proto` / `<thing>_from_proto` pairs)."""

from __future__ import annotations

import math
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
    )


_HEALTH = {pb.HEALTH_OK: "ok", pb.HEALTH_DEGRADED: "degraded", pb.HEALTH_FAILING: "failing"}


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None  # NaN/inf are not JSON


def report_from_proto(msg: pb.DeviceReport) -> ReportRow:
    r = msg.resources
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
    )


def telemetry_from_proto(msg: pb.TelemetryBatch) -> list[TelemetryRow]:
    return [
        TelemetryRow(
            seq=r.seq,
            timestamp_ms=r.timestamp_ms,
            kind=r.kind[:64],
            metrics={k: v for k, v in r.metrics.items() if math.isfinite(v)},
            payload=r.payload,
        )
        for r in msg.records
    ]
