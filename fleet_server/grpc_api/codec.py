"""protobuf <-> server domain types (`<thing>_to_proto` / `<thing>_from_proto` pairs)."""

from __future__ import annotations

import math
from typing import Any

from google.protobuf.json_format import MessageToDict

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


def report_from_proto(msg: pb.DeviceReport) -> ReportRow:
    observed: dict[str, Any] = MessageToDict(msg, preserving_proto_field_name=True)
    observed.pop("device_id", None)
    temp = observed.get("resources", {}).get("temperature_c")
    if isinstance(temp, str) or (isinstance(temp, float) and not math.isfinite(temp)):
        observed["resources"].pop("temperature_c")  # NaN/inf are not JSON
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
