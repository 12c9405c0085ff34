"""Server settings (pydantic-settings, `EDGELOOP_` environment prefix).

Built by `get_settings()` or passed to `create_app(settings)`; never an import-time global, so
each test builds its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGELOOP_", extra="ignore")

    data_dir: Path = Path("./edgeloop-data")
    # Empty: SQLite (WAL) file in data_dir. Otherwise any SQLAlchemy URL (postgresql://...).
    database_url: str = ""

    # Server log lines: "text", or "json" (one object per line: ts, level, logger, msg and the
    # request/device/rollout/deployment ids in context). edgeloop-server reads EDGELOOP_LOG_FORMAT
    # when it configures logging, before Settings is built (cli.py); this field documents and validates it.
    log_format: Literal["text", "json"] = "text"
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_host: str = "127.0.0.1"
    enroll_port: int = 7443  # server-authenticated TLS: Enroll only
    device_port: int = 7444  # mutual TLS: Sync only
    # Names put into the server certificate's SAN; the agent checks one of them.
    public_hostnames: list[str] = Field(default_factory=lambda: ["localhost", "127.0.0.1"])

    # Ingest batching: rows are written in one transaction per flush (never one commit per message).
    flush_interval_ms: int = 50
    flush_max_rows: int = 2000

    # Per-device limits on the Sync stream.
    report_interval_s: int = 30
    telemetry_batch_max: int = 100
    device_max_messages_per_s: int = 10
    device_burst: int = 50
    max_message_bytes: int = 256 * 1024  # bytes; larger messages get RESOURCE_EXHAUSTED
    max_payload_bytes: int = 16 * 1024  # bytes per telemetry record payload

    device_cert_days: int = 365
    # The compiler runs as a child process (nothing imports `compiler`); empty = this Python's
    # `-m compiler`, which needs the compiler extra installed beside the server.
    compiler_command: list[str] = Field(default_factory=list)
    compile_timeout_s: float = 1800.0
    bootstrap_token_ttl_s: int = 24 * 3600

    # OTA repository over HTTP: targets and device-naming metadata need a device token (minted per
    # device, sent in DesiredState over mTLS Sync) or an operator token. True: anonymous reads, for
    # operators who publish the repository as a public mirror/CDN.
    ota_public: bool = False
    ota_token_ttl_s: int = Field(default=3600, ge=60, le=7 * 24 * 3600)  # pushed again at half-life

    # Rollout engine: how often due rollouts are advanced, and how long a replica's claim on one
    # lasts without renewal (another replica takes over after it).
    rollout_tick_s: float = Field(default=2.0, gt=0, le=3600)
    rollout_lease_s: float = Field(default=60.0, ge=1, le=3600)

    # BLAS threads for the server's own numpy work (robust defences, anomaly scores, drift
    # references). OpenBLAS wakes every thread for a product above ~262k multiply-adds, e.g. the
    # 50 x 650 cosine matrix of a robust round, and on a busy server those threads spin
    # (bench.federated.robust_cost --blas 1,0, BENCHMARKS.md: robust-fedavg 88.2 -> 50.8 ms CPU per
    # round, 0.58x). 0 = leave the library's own default.
    blas_threads: int = Field(default=1, ge=0, le=1024)

    # Replicas (fleet_server/coordination): any number of servers on one PostgreSQL. A replica's id
    # names it in leases and presence ("" = "<hostname>-<pid>-<random>"). A singleton job (TUF
    # signer, compile worker, federated runner, drift trigger, audit head signer, CRL refresh) is
    # held by one replica under a lease of `lease_ttl_s` renewed every third of it; a replica whose
    # heartbeat is older than `replica_ttl_s` is dead and its gRPC sessions count as offline.
    replica_id: str = Field(default="", max_length=128)
    lease_ttl_s: float = Field(default=6.0, ge=1, le=3600)
    replica_ttl_s: float = Field(default=6.0, ge=1, le=3600)

    # Artifact store (fleet_server/artifacts): TUF metadata, targets and blobs. "" = the filesystem
    # under <data_dir>/ota; "file:///abs/path" = a shared filesystem; "s3://bucket/prefix" = an
    # S3-compatible store (credentials from the usual AWS_* environment), at `s3_endpoint_url` when
    # it is not AWS. Devices may also fetch /ota straight from the bucket or a CDN in front of it
    # (the agent's EDGELOOP_AGENT_OTA_BASE_URL): the TUF client trusts metadata, not the host.
    artifact_store: str = ""
    s3_endpoint_url: str = ""

    # REST API: per-operator-token rate limit (token bucket; 429 + Retry-After past it) and body size limit.
    operator_rate_per_s: float = Field(default=50.0, gt=0, le=100_000)
    operator_burst: int = Field(default=500, ge=1, le=1_000_000)
    max_request_body_bytes: int = Field(
        default=1 << 20, ge=1024, le=1 << 30
    )  # 413 past it; PUT /ota/blobs exempt
    # MQTT transport (fleet_server/mqtt/bridge.py). "" = off; "mqtt://host:port" (plain, tests and
    # a broker on localhost) or "mqtts://host:port" (TLS with the client certificate below).
    mqtt_url: str = ""
    mqtt_ca_file: Path | None = None
    mqtt_client_cert: Path | None = None
    mqtt_client_key: Path | None = None
    mqtt_share_group: str = "edgeloop"  # shared subscription group: replicas split the uplink
    mqtt_client_id: str = ""  # "" = "edgeloop-server-<hostname>": stable, see mqtt/bridge.py
    mqtt_inflight: int = Field(default=1000, ge=1, le=65535)  # QoS 1 messages held until committed
    # How long the broker keeps this server's session (and queues its share of the uplink) after the
    # client goes. Short on purpose: Mosquitto keeps routing a share of a shared subscription to a
    # member whose client is gone until its session expires, so a replica that never comes back
    # (a Deployment pod has a new name, so a new client id, at every start) would hold records for
    # the whole expiry (tests/e2e/test_replicas_e2e.py saw records stuck with 7 days). A restart
    # within it gets its queued messages redelivered; past it, devices resend what was not acked
    # (agent sync.ack_timeout_s), and the (device_id, seq) key absorbs duplicates.
    mqtt_session_expiry_s: int = Field(default=30, ge=0, le=7 * 24 * 3600)
    # Device status cache of the MQTT bridge: an active status is trusted this long; a revocation on
    # any replica evicts it within 5 s (mqtt/devices.py watches `revoked_at`), and the broker's CRL
    # plus the takeover kick cut the device off anyway. Unknown or revoked is re-read after 5 s, so a
    # device enrolled a moment ago is served. A miss costs ~0.7 ms of server CPU (bench/mqtt).
    mqtt_status_ttl_s: float = Field(default=3600.0, ge=0, le=86400)
    # The broker's `crlfile` (from `edgeloop-server mqtt-config`), rewritten on revocation and
    # renewal, and how to make the broker re-read it: "pidfile:/run/mosquitto.pid" (SIGHUP) or a
    # command ("systemctl reload mosquitto"). certs/wiring.py. Off by default: Debian's Mosquitto
    # 2.0.11 segfaulted after such reloads with live TLS clients (tests/e2e/test_mqtt_fleet_e2e.py);
    # without it, revocation on MQTT is the takeover kick and the bridge's refusal.
    mqtt_crl_file: Path | None = None
    mqtt_broker_reload: str = ""

    @field_validator("mqtt_url")
    @classmethod
    def _mqtt_scheme(cls, value: str) -> str:
        if value and not value.startswith(("mqtt://", "mqtts://")):
            raise ValueError("mqtt_url must be empty, mqtt://host:port or mqtts://host:port")
        return value

    @field_validator("database_url")
    @classmethod
    def _psycopg3_driver(cls, value: str) -> str:
        if value.startswith(("postgresql://", "postgres://")):
            return "postgresql+psycopg://" + value.split("://", 1)[1]
        return value

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'fleet.db').resolve()}"

    @property
    def pki_dir(self) -> Path:
        return self.data_dir / "pki"


def get_settings() -> Settings:
    return Settings()
