"""Domain types the agent reasons with (the transport codec maps protobuf to and from these)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Health(StrEnum):
    OK = "ok"
    DEGRADED = "degraded"
    FAILING = "failing"


@dataclass(frozen=True)
class ModelAssignment:
    slot: str
    model_name: str
    model_version: str
    release_id: str = ""
    deployment_id: str = ""


@dataclass(frozen=True)
class AgentSettings:
    report_interval_s: int = 30
    telemetry_batch_max: int = 100
    max_messages_per_s: int = 10


@dataclass(frozen=True)
class DesiredState:
    generation: int
    settings: AgentSettings = field(default_factory=AgentSettings)
    labels: dict[str, str] = field(default_factory=dict)
    models: tuple[ModelAssignment, ...] = ()
    # Short-lived OTA repository credential (not part of the reconcile decision; see OtaCredential).
    ota_token: str = ""
    ota_token_expires_at_ms: int = 0


@dataclass(frozen=True)
class SlotState:
    slot: str
    model_name: str
    model_version: str
    sha256: str = ""


@dataclass(frozen=True)
class ObservedState:
    applied_generation: int = 0
    settings: AgentSettings = field(default_factory=AgentSettings)
    labels: dict[str, str] = field(default_factory=dict)
    slots: tuple[SlotState, ...] = ()
    health: Health = Health.OK
    health_detail: str = ""


@dataclass(frozen=True)
class Resources:
    cpu_load_1m: float
    mem_total_bytes: int
    mem_available_bytes: int
    disk_free_bytes: int
    temperature_c: float
    uptime_s: int


@dataclass(frozen=True)
class DeviceReport:
    device_id: str
    sequence: int
    timestamp_ms: int
    agent_version: str
    profile: str
    observed: ObservedState
    resources: Resources
    telemetry_dropped_total: int
    telemetry_queued: int


# ---------------------------------------------------------------- inbound from the server


@dataclass(frozen=True)
class TelemetryAcked:
    batch_id: int
    seqs: tuple[int, ...]
    # (seq, reason) of records the server refused for good: drop them, never resend.
    rejected: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True)
class ReportAcked:
    sequence: int
    rejected_reason: str = ""  # non-empty: the server refused (did not store) this report


@dataclass(frozen=True)
class CommandReceived:
    command_id: str
    kind: str  # "flush_telemetry" | "reenroll" | "" (unknown to this agent version)


@dataclass(frozen=True)
class CertificateRenewed:
    """The server's answer to a renew request (inbound event). `error` non-empty: nothing issued."""

    certificate_chain_pem: bytes
    ca_certificate_pem: bytes
    not_after_ms: int
    error: str = ""


Inbound = DesiredState | TelemetryAcked | ReportAcked | CommandReceived | CertificateRenewed
