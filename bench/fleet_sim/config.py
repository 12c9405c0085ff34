"""The simulator's configuration: one `SimConfig` field per command-line flag.

Pure: parsing and validation only (no IO). `SimConfig.from_args(argv)` is the CLI; the scale
bench builds `SimConfig(...)` directly.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit

TRANSPORTS = ("grpc", "mqtt", "mixed")
UPDATE_KINDS = ("good", "failing", "silently_bad")
DEVICES_PER_WORKER = 2500


def parse_mix(text: str) -> dict[str, float]:
    """ "good" -> {"good": 1}; "good=8,failing=1,silently_bad=1" -> shares summing to 1."""
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition("=")
        name = name.strip()
        if name not in UPDATE_KINDS:
            raise ValueError(f"unknown update behaviour {name!r} (one of {', '.join(UPDATE_KINDS)})")
        w = float(weight) if weight else 1.0
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"bad weight for {name!r}: {weight!r}")
        mix[name] = mix.get(name, 0.0) + w
    total = sum(mix.values())
    if total <= 0:
        raise ValueError(f"update mix {text!r} has no positive weight")
    return {k: v / total for k, v in mix.items()}


def parse_versions(text: str) -> dict[str, str]:
    """ "2=silently_bad,3=failing" -> {"2": "silently_bad", "3": "failing"} (model versions)."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        version, _, kind = part.partition("=")
        if kind not in UPDATE_KINDS or not version:
            raise ValueError(f"bad version behaviour {part!r} (VERSION=good|failing|silently_bad)")
        out[version] = kind
    return out


def parse_times(text: str) -> tuple[float, ...]:
    """ "120" or "60,180" -> seconds since the start of the run, sorted."""
    return tuple(sorted(float(p) for p in text.split(",") if p.strip()))


def default_workers(devices: int) -> int:
    return max(1, math.ceil(devices / DEVICES_PER_WORKER))


@dataclass
class SimConfig:
    server: str  # REST base URL of the fleet server, e.g. http://127.0.0.1:8080
    token: str  # an operator token allowed to create bootstrap tokens (admin)
    ca: Path | None = None  # the fleet CA (server data dir's pki/ca.pem); None = from identities cache
    devices: int = 100
    transport: str = "grpc"  # grpc | mqtt | mixed
    mqtt_share: float = 0.5  # with transport=mixed: share of devices on MQTT
    enroll_target: str = ""  # host:port; "" = the server's host, port 7443
    grpc_target: str = ""  # host:port; "" = the enrollment response's sync_endpoint
    mqtt_url: str = ""  # mqtt[s]://host:port (required for mqtt/mixed)
    server_name: str = ""  # TLS name override for gRPC ("" = the target's host)
    mqtt_keepalive_s: float = 60.0
    ramp_per_s: float = 200.0  # new devices connecting per second, fleet-wide
    connect_timeout_s: float = 10.0
    # handshakes in progress per worker process: a simulator's 2,500 devices share one CPU, and
    # thousands of simultaneous TLS handshakes starve each other past any connect timeout
    # (every one times out, retries, and nobody gets through); real devices each have their own
    max_connecting: int = 100
    ack_timeout_s: float = 30.0  # a record not acked this long after its send is sent again
    heartbeat_s: float = 60.0  # a DeviceReport every heartbeat (random phase per device)
    telemetry_per_min: float = 0.0  # telemetry records per device per minute
    churn_per_min: float = 0.0  # devices per minute (fleet-wide) that leave cleanly and come back
    churn_offline_s: float = 30.0  # how long a churned device stays away (mean, exponential)
    drop_rate: float = 0.0  # abrupt connection drops per device per minute
    delay_ms: float = 0.0  # added delay before every send (uniform 0.5x..1.5x)
    storm_at_s: tuple[float, ...] = ()  # every device drops its connection at these times
    update: dict[str, float] = field(default_factory=lambda: {"good": 1.0})
    update_by_version: dict[str, str] = field(default_factory=dict)  # model_version -> kind
    metrics_window_s: float = 0.0  # model_metrics window while serving a model; 0 = heartbeat_s
    install_s: float = 2.0  # time to walk the OTA states for one assignment
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 30.0
    duration_s: float = 60.0  # hold time after the ramp (run() only)
    workers: int = 0  # processes; 0 = one per 2,500 devices
    identities: Path = Path(".fleet_sim/identities")
    id_prefix: str = "sim"
    enroll_concurrency: int = 32
    seed: int = 0
    json_out: Path | None = None
    progress: bool = False  # rich live progress (CLI)
    log_level: str = "WARNING"

    def __post_init__(self) -> None:
        if self.transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, got {self.transport!r}")
        if self.devices < 0:
            raise ValueError("devices must be >= 0")
        if self.transport != "grpc" and not self.mqtt_url:
            raise ValueError(f"transport {self.transport} needs mqtt_url (mqtt[s]://host:port)")
        for name in (
            "ramp_per_s",
            "connect_timeout_s",
            "ack_timeout_s",
            "heartbeat_s",
            "backoff_initial_s",
            "backoff_max_s",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        for name in ("telemetry_per_min", "churn_per_min", "drop_rate", "delay_ms", "duration_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.max_connecting < 1:
            raise ValueError("max_connecting must be >= 1")
        if not 0 <= self.mqtt_share <= 1:
            raise ValueError("mqtt_share must be in [0, 1]")
        if not self.workers:
            self.workers = default_workers(self.devices)
        self.workers = max(1, min(self.workers, max(1, self.devices)))
        if isinstance(self.update, str):
            self.update = parse_mix(self.update)
        else:  # weights as given in Python: validated and normalised like the flag's
            self.update = parse_mix(",".join(f"{k}={v}" for k, v in self.update.items()))
        if isinstance(self.update_by_version, str):
            self.update_by_version = parse_versions(self.update_by_version)

    # ---- derived

    def resolved_enroll_target(self) -> str:
        return self.enroll_target or f"{urlsplit(self.server).hostname or '127.0.0.1'}:7443"

    def transport_of(self, index: int) -> str:
        """Device `index`'s transport: mixed spreads MQTT devices evenly over the index range."""
        if self.transport != "mixed":
            return self.transport
        return (
            "mqtt"
            if math.floor((index + 1) * self.mqtt_share) > math.floor(index * self.mqtt_share)
            else "grpc"
        )

    def window_s(self) -> float:
        return self.metrics_window_s or self.heartbeat_s

    # ---- command line

    @classmethod
    def parser(cls) -> argparse.ArgumentParser:
        p = argparse.ArgumentParser(
            prog="python -m bench.fleet_sim",
            description="Simulated devices driving a real edgeloop fleet server (gRPC and MQTT).",
        )
        p.add_argument("--server", required=True, help="REST base URL, e.g. http://127.0.0.1:8080")
        p.add_argument("--token", required=True, help="admin operator token (creates bootstrap tokens)")
        p.add_argument("--ca", type=Path, help="fleet CA PEM (server data dir/pki/ca.pem)")
        p.add_argument("--devices", type=int, default=100)
        p.add_argument("--transport", choices=TRANSPORTS, default="grpc")
        p.add_argument("--mqtt-share", type=float, default=0.5, help="share of MQTT devices when mixed")
        p.add_argument("--enroll-target", default="", help="host:port (default: server host:7443)")
        p.add_argument("--grpc-target", default="", help="host:port (default: from enrollment)")
        p.add_argument("--mqtt-url", default="", help="mqtt[s]://host:port of the broker")
        p.add_argument("--server-name", default="")
        p.add_argument("--mqtt-keepalive-s", type=float, default=60.0)
        p.add_argument("--ramp-per-s", type=float, default=200.0)
        p.add_argument("--connect-timeout-s", type=float, default=10.0)
        p.add_argument("--ack-timeout-s", type=float, default=30.0)
        p.add_argument("--max-connecting", type=int, default=100, help="handshakes at once per worker")
        p.add_argument("--heartbeat-s", type=float, default=60.0)
        p.add_argument("--telemetry-per-min", type=float, default=0.0)
        p.add_argument("--churn-per-min", type=float, default=0.0)
        p.add_argument("--churn-offline-s", type=float, default=30.0)
        p.add_argument("--drop-rate", type=float, default=0.0, help="drops per device per minute")
        p.add_argument("--delay-ms", type=float, default=0.0)
        p.add_argument("--storm-at-s", type=parse_times, default=(), help="e.g. 120 or 60,180")
        p.add_argument("--update", type=parse_mix, default={"good": 1.0}, help="good=8,failing=1,...")
        p.add_argument("--update-by-version", type=parse_versions, default={}, help="2=silently_bad,...")
        p.add_argument("--metrics-window-s", type=float, default=0.0)
        p.add_argument("--install-s", type=float, default=2.0)
        p.add_argument("--backoff-initial-s", type=float, default=1.0)
        p.add_argument("--backoff-max-s", type=float, default=30.0)
        p.add_argument("--duration-s", type=float, default=60.0)
        p.add_argument("--workers", type=int, default=0, help="processes (default: 1 per 2,500 devices)")
        p.add_argument("--identities", type=Path, default=Path(".fleet_sim/identities"))
        p.add_argument("--id-prefix", default="sim")
        p.add_argument("--enroll-concurrency", type=int, default=32)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--json", dest="json_out", type=Path)
        p.add_argument("--no-progress", dest="progress", action="store_false")
        p.add_argument("--log-level", default="WARNING")
        return p

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None) -> SimConfig:
        ns = cls.parser().parse_args(argv)
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in vars(ns).items() if k in names})
