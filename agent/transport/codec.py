"""protobuf <-> agent domain types (`<thing>_to_proto` / `<thing>_from_proto` pairs).

Shared by both transports (gRPC Sync and MQTT carry the same messages). Besides the `Inbound`
events, a SyncResponse may carry `closed` (the server ends the session: `ServerClosed`, which each
adapter raises as its error) and `renewed` (the answer to a renew request: `CertificateRenewed`).
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.outbox import OutboxRecord
from agent.state import (
    AgentSettings,
    CertificateRenewed,
    CommandReceived,
    DesiredState,
    DeviceReport,
    Health,
    Inbound,
    ModelAssignment,
    ReportAcked,
    TelemetryAcked,
)
from protos.edgeloop.v1 import device_pb2 as pb

MAX_REASON = 200  # characters kept of server-sent reasons and ids (they reach logs and status)

_HEALTH = {Health.OK: pb.HEALTH_OK, Health.DEGRADED: pb.HEALTH_DEGRADED, Health.FAILING: pb.HEALTH_FAILING}


def desired_from_proto(msg: pb.DesiredState) -> DesiredState:
    s = msg.settings
    defaults = AgentSettings()
    return DesiredState(
        generation=msg.generation,
        settings=AgentSettings(
            report_interval_s=s.report_interval_s or defaults.report_interval_s,
            telemetry_batch_max=s.telemetry_batch_max or defaults.telemetry_batch_max,
            max_messages_per_s=s.max_messages_per_s or defaults.max_messages_per_s,
        ),
        labels=dict(msg.labels),
        models=tuple(
            ModelAssignment(m.slot, m.model_name, m.model_version, m.release_id, m.deployment_id)
            for m in msg.models
        ),
        ota_token=msg.ota_access.token,
        ota_token_expires_at_ms=msg.ota_access.expires_at_ms,
    )


@dataclass(frozen=True)
class ServerClosed:
    """`SyncResponse.closed`: `code` is a gRPC status name (RESOURCE_EXHAUSTED, PERMISSION_DENIED...)."""

    code: str
    detail: str


SessionEvent = Inbound | ServerClosed


def report_to_proto(report: DeviceReport, cert_fingerprint: str = "") -> pb.SyncRequest:
    r = report.resources
    return pb.SyncRequest(
        report=pb.DeviceReport(
            device_id=report.device_id,
            sequence=report.sequence,
            timestamp_ms=report.timestamp_ms,
            agent_version=report.agent_version,
            profile=report.profile,
            applied_generation=report.observed.applied_generation,
            slots=[
                pb.SlotState(
                    slot=s.slot, model_name=s.model_name, model_version=s.model_version, sha256=s.sha256
                )
                for s in report.observed.slots
            ],
            health=_HEALTH[report.observed.health],
            health_detail=report.observed.health_detail,
            resources=pb.Resources(
                cpu_load_1m=r.cpu_load_1m,
                mem_total_bytes=r.mem_total_bytes,
                mem_available_bytes=r.mem_available_bytes,
                disk_free_bytes=r.disk_free_bytes,
                temperature_c=r.temperature_c,
                uptime_s=r.uptime_s,
            ),
            telemetry_dropped_total=report.telemetry_dropped_total,
            telemetry_queued=report.telemetry_queued,
            cert_fingerprint=cert_fingerprint,
        )
    )


def telemetry_to_proto(batch_id: int, records: list[OutboxRecord]) -> pb.SyncRequest:
    return pb.SyncRequest(
        telemetry=pb.TelemetryBatch(
            batch_id=batch_id,
            records=[
                pb.TelemetryRecord(
                    seq=r.seq, timestamp_ms=r.timestamp_ms, kind=r.kind, metrics=r.metrics, payload=r.payload
                )
                for r in records
            ],
        )
    )


def command_result_to_proto(command_id: str, ok: bool, detail: str) -> pb.SyncRequest:
    return pb.SyncRequest(command_result=pb.CommandResult(command_id=command_id, ok=ok, detail=detail))


def renew_to_proto(csr_pem: bytes) -> pb.SyncRequest:
    return pb.SyncRequest(renew=pb.RenewRequest(csr_pem=csr_pem))


def inbound_from_proto(msg: pb.SyncResponse) -> SessionEvent | None:
    kind = msg.WhichOneof("msg")
    if kind == "closed":
        return ServerClosed(code=msg.closed.code[:MAX_REASON], detail=msg.closed.detail[:MAX_REASON])
    if kind == "renewed":
        r = msg.renewed
        return CertificateRenewed(
            certificate_chain_pem=r.certificate_chain_pem,
            ca_certificate_pem=r.ca_certificate_pem,
            not_after_ms=r.not_after_ms,
            error=r.error[:MAX_REASON],
        )
    if kind == "desired":
        return desired_from_proto(msg.desired)
    if kind == "telemetry_ack":
        ack = msg.telemetry_ack
        return TelemetryAcked(
            batch_id=ack.batch_id,
            seqs=tuple(ack.seqs),
            rejected=tuple((r.seq, r.reason[:MAX_REASON]) for r in ack.rejected),
        )
    if kind == "report_ack":
        return ReportAcked(
            sequence=msg.report_ack.sequence, rejected_reason=msg.report_ack.rejected_reason[:MAX_REASON]
        )
    if kind == "command":
        return CommandReceived(
            command_id=msg.command.command_id[:MAX_REASON], kind=msg.command.WhichOneof("kind") or ""
        )
    return None  # a newer server's message this agent does not know: ignore
