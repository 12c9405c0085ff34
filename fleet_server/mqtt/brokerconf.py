"""Mosquitto configuration for the fleet: the config file, the ACL, TLS material, the CRL.

`write_broker_config()` (behind `edgeloop-server mqtt-config`) writes into one directory:

| file | what |
|---|---|
| `mosquitto.conf` | one TLS listener (mutual TLS with the fleet CA), limits, persistence |
| `ca.pem` | the fleet CA: the broker verifies device certificates with it |
| `broker.pem`, `broker.key` | the broker's TLS server certificate, issued by the fleet CA |
| `server-client.pem`, `server-client.key` | the fleet server's own MQTT identity (client certificate) |
| `acl` | `protos/edgeloop/mqtt.py` patterns: a device only under its own id; the server where it must |
| `crl.pem` | revoked device certificates; rewritten by certs/crl.py, re-read on SIGHUP |
| `data/` | `persistence_location`: persistent sessions and queued QoS 1 messages survive a restart |

Keys are 0600; every file is written atomically (temp file + rename), so a broker reloading on
SIGHUP never reads half a CRL or ACL.

Identity: `use_identity_as_username` makes the certificate CN the MQTT username. Device CNs are device
ids (`[a-z0-9][a-z0-9._-]{1,62}`, fleet_server/crud/devices.py); the server's CN is
`SERVER_IDENTITY` = "edgeloop:server", which contains ':' and so can never be a device id: no device
can be enrolled under the server's ACL entry.

Queue sizing (the reasoning, since the defaults lose data):
- Mosquitto queues QoS 1 messages per client beyond `max_inflight_messages`, up to
  `max_queued_messages` (default 1000) and `max_queued_bytes` (default unlimited); above either it
  *silently drops* the message for that client (measured: 31-82% of QoS 1 messages lost by a slow
  subscriber with the defaults, /work/shared/research). The subscriber that matters is the server
  bridge: one shared-subscription member receives a whole fleet's uplink, and during a database stall
  or a server restart (its session is persistent) the broker must hold everything until it drains.
- So the count limit is sized to ride out `stall_s` seconds of the fleet's peak uplink:
  `max_queued_messages = peak_msgs_per_s * stall_s` (defaults 20,000 msg/s x 120 s = 2,400,000;
  20k/s is 10,000 devices at 2 msg/s, 2 minutes covers a server restart or a failover).
  `max_queued_bytes` is the memory bound the operator actually budgets (default 1 GiB per client):
  a device session only ever queues its own small downlink, so in practice only the server's
  sessions come near it. tests/integration/test_broker_security.py proves that 3x the default
  1000 messages published while the server's session is offline all arrive.
- `max_inflight_messages` (default 20) caps unacknowledged QoS 1 deliveries to MQTT 3.1.1 clients:
  with 20 and a 1 ms round trip such a client cannot take more than ~20k msg/s; 200 leaves room
  for a few ms of RTT. MQTT 5 clients (the server bridge) announce their own Receive Maximum, and
  2.0.11 honours it over this setting (measured: 1000 unacked deliveries to a v5 subscriber with
  Receive Maximum 1000 under max_inflight_messages 200), so the bridge's `mqtt_inflight` rules.
- `message_size_limit` equals the server's `max_message_bytes` (the gRPC/REST limit), so the
  broker refuses oversized messages before they reach the bridge.
- `persistent_client_expiration` drops sessions of devices gone for 30 days, so a decommissioned
  device's queue does not live forever.

Does not own: the topic names and ACL lines (protos/edgeloop/mqtt.py), deciding what is revoked
(certs/revocation.py), running or reloading the broker (certs/crl.py holds the reload hook).
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass, field
from pathlib import Path

from fleet_server.pki import FleetCA, write_atomic
from protos.edgeloop import mqtt

SERVER_IDENTITY = "edgeloop:server"
PRIVATE = 0o600
PUBLIC = 0o644


@dataclass(frozen=True)
class BrokerOptions:
    port: int = 8883
    bind: str = ""  # "" = all interfaces
    hostnames: list[str] = field(default_factory=lambda: ["localhost", "127.0.0.1"])
    server_identity: str = SERVER_IDENTITY
    peak_msgs_per_s: int = 20_000  # the fleet's uplink at its busiest
    stall_s: int = 120  # how long a stalled or restarting server must not lose messages
    max_queued_bytes: int = 1 << 30  # per client: the memory bound
    max_inflight_messages: int = 200
    message_size_limit: int = 256 * 1024  # = Settings.max_message_bytes
    persistent_client_expiration: str = "30d"
    # Mosquitto started as root drops to this user *before* reading its key: the broker key and
    # `data/` are chowned to it when this command runs as root (otherwise the caller arranges it).
    run_as: str = "mosquitto"

    @property
    def max_queued_messages(self) -> int:
        return self.peak_msgs_per_s * self.stall_s


@dataclass(frozen=True)
class BrokerFiles:
    dir: Path
    config: Path
    ca: Path
    broker_cert: Path
    broker_key: Path
    server_cert: Path
    server_key: Path
    acl: Path
    crl: Path
    persistence: Path

    def as_dict(self) -> dict[str, str]:
        return {name: str(getattr(self, name)) for name in self.__dataclass_fields__}


def files_in(out: Path) -> BrokerFiles:
    out = out.resolve()
    return BrokerFiles(
        dir=out,
        config=out / "mosquitto.conf",
        ca=out / "ca.pem",
        broker_cert=out / "broker.pem",
        broker_key=out / "broker.key",
        server_cert=out / "server-client.pem",
        server_key=out / "server-client.key",
        acl=out / "acl",
        crl=out / "crl.pem",
        persistence=out / "data",
    )


def acl_text(server_identity: str = SERVER_IDENTITY) -> str:
    """Patterns first (they apply to every user), then the server's own `user` block."""
    lines = ["# edgeloop: generated by `edgeloop-server mqtt-config`; do not edit", ""]
    lines += mqtt.device_acl()
    lines += ["", *mqtt.server_acl(server_identity)]
    return "\n".join(lines) + "\n"


def config_text(files: BrokerFiles, options: BrokerOptions) -> str:
    listener = f"listener {options.port} {options.bind}".rstrip()
    return "\n".join(
        [
            "# edgeloop: generated by `edgeloop-server mqtt-config`; see fleet_server/mqtt/brokerconf.py",
            "per_listener_settings false",
            f"user {options.run_as}",
            "allow_anonymous false",
            f"acl_file {files.acl}",
            "persistence true",
            f"persistence_location {files.persistence}/",
            "autosave_interval 60",
            f"persistent_client_expiration {options.persistent_client_expiration}",
            f"max_queued_messages {options.max_queued_messages}",
            f"max_queued_bytes {options.max_queued_bytes}",
            f"max_inflight_messages {options.max_inflight_messages}",
            f"message_size_limit {options.message_size_limit}",
            "connection_messages true",
            "",
            listener,
            "protocol mqtt",
            f"cafile {files.ca}",
            f"certfile {files.broker_cert}",
            f"keyfile {files.broker_key}",
            f"crlfile {files.crl}",
            "require_certificate true",
            "use_identity_as_username true",
            "tls_version tlsv1.2",
            "",
        ]
    )


def write_broker_config(ca: FleetCA, out: Path, options: BrokerOptions, *, crl_pem: bytes) -> BrokerFiles:
    """Write every broker file into `out` (keys 0600, atomically); returns their paths.

    Re-running replaces the certificates and keys (new serials) and keeps `data/`.
    """
    files = files_in(out)
    files.persistence.mkdir(parents=True, exist_ok=True)
    broker_key, broker_cert = ca.issue_service_certificate(
        common_name="edgeloop mqtt broker", hostnames=options.hostnames
    )
    server_key, server_cert = ca.issue_service_certificate(common_name=options.server_identity)
    write_atomic(files.ca, ca.cert_pem, PUBLIC)
    write_atomic(files.broker_key, broker_key, PRIVATE)
    write_atomic(files.broker_cert, broker_cert.pem + ca.cert_pem, PUBLIC)
    write_atomic(files.server_key, server_key, PRIVATE)
    write_atomic(files.server_cert, server_cert.pem, PUBLIC)
    write_atomic(files.crl, crl_pem, PUBLIC)
    write_atomic(files.acl, acl_text(options.server_identity).encode(), PUBLIC)
    write_atomic(files.config, config_text(files, options).encode(), PUBLIC)
    _give_to(options.run_as, files.broker_key, files.persistence)
    return files


def _give_to(user: str, *paths: Path) -> None:
    """chown `paths` to `user` when running as root (a no-op otherwise or for an unknown user)."""
    if os.geteuid() != 0:
        return
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return
    for path in paths:
        os.chown(path, entry.pw_uid, entry.pw_gid)
