"""Agent configuration: frozen dataclasses from TOML plus `EDGELOOP_AGENT_*` environment overrides.

Stdlib only. `load()` validates everything at startup and raises ConfigError with the offending
key; the result is passed explicitly (never a global). Limits carry their unit in the name.

Environment overrides use `EDGELOOP_AGENT_<SECTION>_<KEY>`, e.g.
`EDGELOOP_AGENT_SERVER_ENROLL_ENDPOINT=fleet.example.com:7443`.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import ConfigError


@dataclass(frozen=True)
class ServerConfig:
    enroll_endpoint: str = "localhost:7443"
    # Empty: use the endpoint the server returned at enrollment.
    sync_endpoint: str = ""
    # Fleet CA bundle used to authenticate the server before enrollment (trust on first use is refused).
    ca_file: str = ""
    # TLS name to expect in the server certificate ("" = host part of the endpoint).
    server_name: str = ""
    # How the Sync session and the federated link travel: "grpc" or "mqtt" (enrollment is always
    # gRPC on enroll_endpoint). MQTT needs mqtt_endpoint: "mqtts://host:8883" (mutual TLS with the
    # device identity) or "mqtt://host:1883" (plain: tests and demos on a local broker only).
    transport: str = "grpc"
    mqtt_endpoint: str = ""
    # Renew the device certificate over the session when less than this fraction of its lifetime is left.
    renew_before_fraction: float = 1 / 3


@dataclass(frozen=True)
class DeviceConfig:
    id: str = ""
    profile: str = "generic-x86"
    data_dir: str = "/var/lib/edgeloop"


@dataclass(frozen=True)
class TelemetryConfig:
    interval_s: float = 10.0
    queue_max_records: int = 100_000
    batch_max: int = 100
    max_in_flight_batches: int = 4


@dataclass(frozen=True)
class SyncConfig:
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 60.0
    backoff_multiplier: float = 2.0
    backoff_jitter: float = 0.2  # fraction of the delay, uniformly +/-
    # A session that stayed up this long resets the backoff.
    healthy_session_s: float = 30.0
    shutdown_flush_s: float = 5.0
    # A telemetry batch with no ack this long after it was sent ends the session (the next one
    # resends every unacked record; the server dedupes by seq). On gRPC that means a stuck server;
    # on MQTT, QoS 1 is per hop, so a broker restart can lose a message between broker and server
    # (Mosquitto 2.0 does not restore shared subscriptions from persistence until the server
    # resubscribes): without this the window would wait for that ack forever.
    ack_timeout_s: float = 30.0


@dataclass(frozen=True)
class InferenceConfig:
    enabled: bool = True
    # "" = <data_dir>/inference.sock and <data_dir>/models
    socket_path: str = ""
    fast_socket_path: str = ""  # opt-in framed fast path; "" = off
    tcp_port: int = -1  # -1 = Unix socket only; 0 = any free loopback port
    slots_root: str = ""
    micro_batch: bool = False
    micro_batch_wait_s: float = 0.0
    cache_entries: int = 0
    capture_per_second: float = 20.0  # input/output samples kept for the drift monitor (0 = off)
    max_request_bytes: int = 16 * 2**20
    stats_interval_s: float = 30.0  # inference telemetry (latency histogram, errors, throughput)


@dataclass(frozen=True)
class DriftConfig:
    enabled: bool = True  # needs inference.capture_per_second > 0 and a drift_reference.json per model
    interval_s: float = 5.0  # how often captured samples are fed to the monitor


@dataclass(frozen=True)
class MetricsConfig:
    # Live model metrics (issue 12): one model_metrics record per serving model per window.
    window_s: float = 30.0


@dataclass(frozen=True)
class AgentConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    # The [federated] table, validated by agent.federated.client.FederatedConfig.from_mapping at
    # daemon start (kept raw here so this module stays stdlib-only).
    federated: dict[str, object] = field(default_factory=dict)

    @property
    def data_path(self) -> Path:
        return Path(self.device.data_dir)

    @property
    def inference_socket(self) -> Path:
        return (
            Path(self.inference.socket_path)
            if self.inference.socket_path
            else self.data_path / "inference.sock"
        )

    @property
    def slots_root(self) -> Path:
        return Path(self.inference.slots_root) if self.inference.slots_root else self.data_path / "models"


_SECTIONS: dict[str, type[Any]] = {
    "server": ServerConfig,
    "device": DeviceConfig,
    "telemetry": TelemetryConfig,
    "sync": SyncConfig,
    "inference": InferenceConfig,
    "drift": DriftConfig,
    "metrics": MetricsConfig,
}


def load(path: Path | None = None, env: Mapping[str, str] | None = None) -> AgentConfig:
    """Read TOML (if given), apply environment overrides, validate.

    Raises:
        ConfigError: unreadable file, unknown key, wrong type or out-of-range value.
    """
    env = os.environ if env is None else env
    raw: dict[str, dict[str, Any]] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ConfigError(f"cannot read agent config {path}: {err}") from err
    sections: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        values = dict(raw.get(name, {}))
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(values) - set(known)
        if unknown:
            raise ConfigError(f"unknown key(s) in [{name}]: {sorted(unknown)}")
        for key, fld in known.items():
            env_key = f"EDGELOOP_AGENT_{name.upper()}_{key.upper()}"
            if env_key in env:
                values[key] = env[env_key]
            if key in values:
                values[key] = _coerce(f"{name}.{key}", values[key], fld.default)
        sections[name] = cls(**values)
    sections["federated"] = _raw_section("federated", raw.get("federated", {}), env)
    unknown_sections = set(raw) - set(_SECTIONS) - {"federated"}
    if unknown_sections:
        raise ConfigError(f"unknown config section(s): {sorted(unknown_sections)}")
    cfg = AgentConfig(**sections)
    _validate(cfg)
    return cfg


def _raw_section(name: str, values: dict[str, Any], env: Mapping[str, str]) -> dict[str, object]:
    """A table validated elsewhere; `EDGELOOP_AGENT_<NAME>_<KEY>` overrides parse as TOML values."""
    out: dict[str, object] = dict(values)
    prefix = f"EDGELOOP_AGENT_{name.upper()}_"
    for key, text in env.items():
        if key.startswith(prefix):
            try:
                out[key[len(prefix) :].lower()] = tomllib.loads(f"v = {text}")["v"]
            except tomllib.TOMLDecodeError:
                out[key[len(prefix) :].lower()] = text
    return out


def _coerce(key: str, value: Any, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            return value if isinstance(value, bool) else str(value).lower() in {"1", "true", "yes", "on"}
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        return str(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{key}: expected {type(default).__name__}, got {value!r}") from err


def _validate(cfg: AgentConfig) -> None:
    checks = [
        (cfg.telemetry.interval_s > 0, "telemetry.interval_s must be > 0"),
        (cfg.telemetry.queue_max_records >= 1, "telemetry.queue_max_records must be >= 1"),
        (1 <= cfg.telemetry.batch_max <= 1000, "telemetry.batch_max must be in 1..1000"),
        (cfg.telemetry.max_in_flight_batches >= 1, "telemetry.max_in_flight_batches must be >= 1"),
        (cfg.sync.backoff_initial_s > 0, "sync.backoff_initial_s must be > 0"),
        (
            cfg.sync.backoff_max_s >= cfg.sync.backoff_initial_s,
            "sync.backoff_max_s must be >= backoff_initial_s",
        ),
        (cfg.sync.backoff_multiplier >= 1, "sync.backoff_multiplier must be >= 1"),
        (0 <= cfg.sync.backoff_jitter < 1, "sync.backoff_jitter must be in [0, 1)"),
        (bool(cfg.device.data_dir), "device.data_dir must be set"),
        (cfg.inference.stats_interval_s > 0, "inference.stats_interval_s must be > 0"),
        (cfg.inference.capture_per_second >= 0, "inference.capture_per_second must be >= 0"),
        (cfg.drift.interval_s > 0, "drift.interval_s must be > 0"),
        (0.1 <= cfg.metrics.window_s <= 86_400, "metrics.window_s must be in 0.1..86400"),
        (cfg.inference.tcp_port >= -1, "inference.tcp_port must be -1 (off), 0 (any) or a port"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    _validate_transport(cfg.server)


TRANSPORTS = ("grpc", "mqtt")


def _validate_transport(server: ServerConfig) -> None:
    if server.transport not in TRANSPORTS:
        raise ConfigError(f"server.transport must be one of {list(TRANSPORTS)}, got {server.transport!r}")
    if not 0 < server.renew_before_fraction < 1:
        raise ConfigError("server.renew_before_fraction must be in (0, 1)")
    if server.transport != "mqtt":
        return
    scheme, sep, rest = server.mqtt_endpoint.partition("://")
    if not sep or scheme not in ("mqtt", "mqtts") or not rest:
        raise ConfigError(
            'server.transport = "mqtt" needs server.mqtt_endpoint = "mqtts://host:8883" '
            f"(or mqtt://host:1883 for a local test broker), got {server.mqtt_endpoint!r}"
        )
