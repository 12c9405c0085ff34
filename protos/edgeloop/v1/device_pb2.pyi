from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Health(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HEALTH_UNSPECIFIED: _ClassVar[Health]
    HEALTH_OK: _ClassVar[Health]
    HEALTH_DEGRADED: _ClassVar[Health]
    HEALTH_FAILING: _ClassVar[Health]
HEALTH_UNSPECIFIED: Health
HEALTH_OK: Health
HEALTH_DEGRADED: Health
HEALTH_FAILING: Health

class EnrollRequest(_message.Message):
    __slots__ = ("bootstrap_token", "csr_pem", "device_id", "profile", "agent_version")
    BOOTSTRAP_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    bootstrap_token: str
    csr_pem: bytes
    device_id: str
    profile: str
    agent_version: str
    def __init__(self, bootstrap_token: _Optional[str] = ..., csr_pem: _Optional[bytes] = ..., device_id: _Optional[str] = ..., profile: _Optional[str] = ..., agent_version: _Optional[str] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("device_id", "certificate_chain_pem", "ca_certificate_pem", "desired", "sync_endpoint")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_CHAIN_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    DESIRED_FIELD_NUMBER: _ClassVar[int]
    SYNC_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    certificate_chain_pem: bytes
    ca_certificate_pem: bytes
    desired: DesiredState
    sync_endpoint: str
    def __init__(self, device_id: _Optional[str] = ..., certificate_chain_pem: _Optional[bytes] = ..., ca_certificate_pem: _Optional[bytes] = ..., desired: _Optional[_Union[DesiredState, _Mapping]] = ..., sync_endpoint: _Optional[str] = ...) -> None: ...

class ModelAssignment(_message.Message):
    __slots__ = ("slot", "model_name", "model_version", "release_id", "deployment_id")
    SLOT_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RELEASE_ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    slot: str
    model_name: str
    model_version: str
    release_id: str
    deployment_id: str
    def __init__(self, slot: _Optional[str] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., release_id: _Optional[str] = ..., deployment_id: _Optional[str] = ...) -> None: ...

class AgentSettings(_message.Message):
    __slots__ = ("report_interval_s", "telemetry_batch_max", "max_messages_per_s")
    REPORT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_BATCH_MAX_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGES_PER_S_FIELD_NUMBER: _ClassVar[int]
    report_interval_s: int
    telemetry_batch_max: int
    max_messages_per_s: int
    def __init__(self, report_interval_s: _Optional[int] = ..., telemetry_batch_max: _Optional[int] = ..., max_messages_per_s: _Optional[int] = ...) -> None: ...

class OtaAccess(_message.Message):
    __slots__ = ("token", "expires_at_ms")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    token: str
    expires_at_ms: int
    def __init__(self, token: _Optional[str] = ..., expires_at_ms: _Optional[int] = ...) -> None: ...

class DesiredState(_message.Message):
    __slots__ = ("generation", "models", "settings", "labels", "ota_access")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    OTA_ACCESS_FIELD_NUMBER: _ClassVar[int]
    generation: int
    models: _containers.RepeatedCompositeFieldContainer[ModelAssignment]
    settings: AgentSettings
    labels: _containers.ScalarMap[str, str]
    ota_access: OtaAccess
    def __init__(self, generation: _Optional[int] = ..., models: _Optional[_Iterable[_Union[ModelAssignment, _Mapping]]] = ..., settings: _Optional[_Union[AgentSettings, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., ota_access: _Optional[_Union[OtaAccess, _Mapping]] = ...) -> None: ...

class SlotState(_message.Message):
    __slots__ = ("slot", "model_name", "model_version", "sha256")
    SLOT_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    slot: str
    model_name: str
    model_version: str
    sha256: str
    def __init__(self, slot: _Optional[str] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., sha256: _Optional[str] = ...) -> None: ...

class Resources(_message.Message):
    __slots__ = ("cpu_load_1m", "mem_total_bytes", "mem_available_bytes", "disk_free_bytes", "temperature_c", "uptime_s")
    CPU_LOAD_1M_FIELD_NUMBER: _ClassVar[int]
    MEM_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEM_AVAILABLE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_C_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    cpu_load_1m: float
    mem_total_bytes: int
    mem_available_bytes: int
    disk_free_bytes: int
    temperature_c: float
    uptime_s: int
    def __init__(self, cpu_load_1m: _Optional[float] = ..., mem_total_bytes: _Optional[int] = ..., mem_available_bytes: _Optional[int] = ..., disk_free_bytes: _Optional[int] = ..., temperature_c: _Optional[float] = ..., uptime_s: _Optional[int] = ...) -> None: ...

class DeviceReport(_message.Message):
    __slots__ = ("device_id", "sequence", "timestamp_ms", "agent_version", "profile", "applied_generation", "slots", "health", "health_detail", "resources", "telemetry_dropped_total", "telemetry_queued", "cert_fingerprint")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    APPLIED_GENERATION_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    HEALTH_DETAIL_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_DROPPED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_QUEUED_FIELD_NUMBER: _ClassVar[int]
    CERT_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    sequence: int
    timestamp_ms: int
    agent_version: str
    profile: str
    applied_generation: int
    slots: _containers.RepeatedCompositeFieldContainer[SlotState]
    health: Health
    health_detail: str
    resources: Resources
    telemetry_dropped_total: int
    telemetry_queued: int
    cert_fingerprint: str
    def __init__(self, device_id: _Optional[str] = ..., sequence: _Optional[int] = ..., timestamp_ms: _Optional[int] = ..., agent_version: _Optional[str] = ..., profile: _Optional[str] = ..., applied_generation: _Optional[int] = ..., slots: _Optional[_Iterable[_Union[SlotState, _Mapping]]] = ..., health: _Optional[_Union[Health, str]] = ..., health_detail: _Optional[str] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ..., telemetry_dropped_total: _Optional[int] = ..., telemetry_queued: _Optional[int] = ..., cert_fingerprint: _Optional[str] = ...) -> None: ...

class TelemetryRecord(_message.Message):
    __slots__ = ("seq", "timestamp_ms", "kind", "metrics", "payload")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    seq: int
    timestamp_ms: int
    kind: str
    metrics: _containers.ScalarMap[str, float]
    payload: bytes
    def __init__(self, seq: _Optional[int] = ..., timestamp_ms: _Optional[int] = ..., kind: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., payload: _Optional[bytes] = ...) -> None: ...

class TelemetryBatch(_message.Message):
    __slots__ = ("batch_id", "records")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    records: _containers.RepeatedCompositeFieldContainer[TelemetryRecord]
    def __init__(self, batch_id: _Optional[int] = ..., records: _Optional[_Iterable[_Union[TelemetryRecord, _Mapping]]] = ...) -> None: ...

class ModelMetricsWindow(_message.Message):
    __slots__ = ("model_name", "model_version", "model_sha256", "deployment_id", "window_start_ms", "window_s", "predictions", "errors", "confidence_hist", "class_counts", "confidence_sum", "confidence_sum_sq", "latency_p50_ms", "latency_p95_ms", "latency_sum_ms", "latency_sum_sq_ms", "latency_count", "drift_score", "shadow_agreement", "shadow_samples")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_MS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_HIST_FIELD_NUMBER: _ClassVar[int]
    CLASS_COUNTS_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_SUM_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_SUM_SQ_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P95_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_SUM_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_SUM_SQ_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_COUNT_FIELD_NUMBER: _ClassVar[int]
    DRIFT_SCORE_FIELD_NUMBER: _ClassVar[int]
    SHADOW_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    SHADOW_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    model_sha256: str
    deployment_id: str
    window_start_ms: int
    window_s: int
    predictions: int
    errors: int
    confidence_hist: _containers.RepeatedScalarFieldContainer[int]
    class_counts: _containers.RepeatedScalarFieldContainer[int]
    confidence_sum: float
    confidence_sum_sq: float
    latency_p50_ms: float
    latency_p95_ms: float
    latency_sum_ms: float
    latency_sum_sq_ms: float
    latency_count: int
    drift_score: float
    shadow_agreement: float
    shadow_samples: int
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., model_sha256: _Optional[str] = ..., deployment_id: _Optional[str] = ..., window_start_ms: _Optional[int] = ..., window_s: _Optional[int] = ..., predictions: _Optional[int] = ..., errors: _Optional[int] = ..., confidence_hist: _Optional[_Iterable[int]] = ..., class_counts: _Optional[_Iterable[int]] = ..., confidence_sum: _Optional[float] = ..., confidence_sum_sq: _Optional[float] = ..., latency_p50_ms: _Optional[float] = ..., latency_p95_ms: _Optional[float] = ..., latency_sum_ms: _Optional[float] = ..., latency_sum_sq_ms: _Optional[float] = ..., latency_count: _Optional[int] = ..., drift_score: _Optional[float] = ..., shadow_agreement: _Optional[float] = ..., shadow_samples: _Optional[int] = ...) -> None: ...

class RejectedRecord(_message.Message):
    __slots__ = ("seq", "reason")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    seq: int
    reason: str
    def __init__(self, seq: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class TelemetryAck(_message.Message):
    __slots__ = ("batch_id", "seqs", "rejected")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    SEQS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    seqs: _containers.RepeatedScalarFieldContainer[int]
    rejected: _containers.RepeatedCompositeFieldContainer[RejectedRecord]
    def __init__(self, batch_id: _Optional[int] = ..., seqs: _Optional[_Iterable[int]] = ..., rejected: _Optional[_Iterable[_Union[RejectedRecord, _Mapping]]] = ...) -> None: ...

class Command(_message.Message):
    __slots__ = ("command_id", "flush_telemetry", "reenroll")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    FLUSH_TELEMETRY_FIELD_NUMBER: _ClassVar[int]
    REENROLL_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    flush_telemetry: FlushTelemetry
    reenroll: Reenroll
    def __init__(self, command_id: _Optional[str] = ..., flush_telemetry: _Optional[_Union[FlushTelemetry, _Mapping]] = ..., reenroll: _Optional[_Union[Reenroll, _Mapping]] = ...) -> None: ...

class FlushTelemetry(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Reenroll(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class CommandResult(_message.Message):
    __slots__ = ("command_id", "ok", "detail")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    ok: bool
    detail: str
    def __init__(self, command_id: _Optional[str] = ..., ok: _Optional[bool] = ..., detail: _Optional[str] = ...) -> None: ...

class RenewRequest(_message.Message):
    __slots__ = ("csr_pem",)
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    csr_pem: bytes
    def __init__(self, csr_pem: _Optional[bytes] = ...) -> None: ...

class RenewResponse(_message.Message):
    __slots__ = ("certificate_chain_pem", "ca_certificate_pem", "not_after_ms", "error")
    CERTIFICATE_CHAIN_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    certificate_chain_pem: bytes
    ca_certificate_pem: bytes
    not_after_ms: int
    error: str
    def __init__(self, certificate_chain_pem: _Optional[bytes] = ..., ca_certificate_pem: _Optional[bytes] = ..., not_after_ms: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class SyncRequest(_message.Message):
    __slots__ = ("report", "telemetry", "command_result", "renew")
    REPORT_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_FIELD_NUMBER: _ClassVar[int]
    COMMAND_RESULT_FIELD_NUMBER: _ClassVar[int]
    RENEW_FIELD_NUMBER: _ClassVar[int]
    report: DeviceReport
    telemetry: TelemetryBatch
    command_result: CommandResult
    renew: RenewRequest
    def __init__(self, report: _Optional[_Union[DeviceReport, _Mapping]] = ..., telemetry: _Optional[_Union[TelemetryBatch, _Mapping]] = ..., command_result: _Optional[_Union[CommandResult, _Mapping]] = ..., renew: _Optional[_Union[RenewRequest, _Mapping]] = ...) -> None: ...

class SessionClosed(_message.Message):
    __slots__ = ("code", "detail")
    CODE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    code: str
    detail: str
    def __init__(self, code: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class ReportAck(_message.Message):
    __slots__ = ("sequence", "rejected_reason")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    REJECTED_REASON_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    rejected_reason: str
    def __init__(self, sequence: _Optional[int] = ..., rejected_reason: _Optional[str] = ...) -> None: ...

class SyncResponse(_message.Message):
    __slots__ = ("desired", "command", "telemetry_ack", "report_ack", "closed", "renewed")
    DESIRED_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_ACK_FIELD_NUMBER: _ClassVar[int]
    REPORT_ACK_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    RENEWED_FIELD_NUMBER: _ClassVar[int]
    desired: DesiredState
    command: Command
    telemetry_ack: TelemetryAck
    report_ack: ReportAck
    closed: SessionClosed
    renewed: RenewResponse
    def __init__(self, desired: _Optional[_Union[DesiredState, _Mapping]] = ..., command: _Optional[_Union[Command, _Mapping]] = ..., telemetry_ack: _Optional[_Union[TelemetryAck, _Mapping]] = ..., report_ack: _Optional[_Union[ReportAck, _Mapping]] = ..., closed: _Optional[_Union[SessionClosed, _Mapping]] = ..., renewed: _Optional[_Union[RenewResponse, _Mapping]] = ...) -> None: ...
