"""The MQTT contract: topic names, who publishes what, QoS and retain, written once.

Shared by the agent (`agent/transport/mqtt_fleet.py`, `agent/federated/mqtt_link.py`) and the fleet
server (`fleet_server/mqtt/`), which must agree byte for byte (ARCHITECTURE.md rule 1). Payloads are
the same protobuf messages as on gRPC, serialized bare (no framing: one MQTT message is one
protobuf message, and the topic says which type it is):

| topic (under `edgeloop/v1/devices/{device_id}/`) | direction | payload | QoS | retain |
|---|---|---|---|---|
| `up`        | device → server | `device.SyncRequest` (report, telemetry, command result, renew) | 1 | no |
| `down`      | server → device | `device.SyncResponse` (acks, commands, closed, renewed) | 1 | no |
| `desired`   | server → device | `device.DesiredState` (latest; sent at once on reconnect) | 1 | yes |
| `status`    | device → server | `b"online"` on connect; `b"offline"` as last will and on stop | 1 | yes |
| `fl/attach` | device → server | `federated.TaskStreamRequest`; empty = detach (also the will) | 1 | no |
| `fl/task`   | server → device | `federated.TrainTask` | 1 | no |
| `fl/result` | device → server | `federated.TaskResult` | 1 | no |
| `fl/ack`    | server → device | `federated.PushResultResponse` | 1 | no |

Identity: the broker maps a device's client certificate to its username (`use_identity_as_username`)
and its ACL lets that username publish and subscribe only under its own id (`DEVICE_ACL`), so the
server trusts the `{device_id}` in a topic. Client ids: the Sync session uses `{device_id}`, the
federated link `{device_id}.fl` (a second connection with the same id would take the first over).
Servers read with a shared subscription (`$share/edgeloop/...`), so several replicas split the load.

Pure: no paho, no IO. Does not own broker configuration files (fleet_server/mqtt/brokerconf.py).
"""

from __future__ import annotations

import re
from typing import Final

PREFIX: Final = "edgeloop/v1/devices"
QOS: Final = 1
SHARE_GROUP: Final = "edgeloop"

UP: Final = "up"
DOWN: Final = "down"
DESIRED: Final = "desired"
STATUS: Final = "status"
FL_ATTACH: Final = "fl/attach"
FL_TASK: Final = "fl/task"
FL_RESULT: Final = "fl/result"
FL_ACK: Final = "fl/ack"

ONLINE: Final = b"online"
OFFLINE: Final = b"offline"

DEVICE_PUBLISHES: Final = (UP, STATUS, FL_ATTACH, FL_RESULT)
DEVICE_SUBSCRIBES: Final = (DOWN, DESIRED, FL_TASK, FL_ACK)
RETAINED: Final = frozenset({DESIRED, STATUS})

# Same alphabet as the server's device ids (fleet_server/crud/devices.py): never '/', '+' or '#'.
_DEVICE_ID = re.compile(r"[a-z0-9][a-z0-9._-]{1,62}")
_KINDS: Final = frozenset((*DEVICE_PUBLISHES, *DEVICE_SUBSCRIBES))


def topic(device_id: str, kind: str) -> str:
    """`edgeloop/v1/devices/{device_id}/{kind}`. Raises ValueError on a bad id or an unknown kind."""
    if not _DEVICE_ID.fullmatch(device_id):
        raise ValueError(f"invalid device id for an MQTT topic: {device_id!r}")
    if kind not in _KINDS:
        raise ValueError(f"unknown MQTT topic kind {kind!r}")
    return f"{PREFIX}/{device_id}/{kind}"


def parse(name: str) -> tuple[str, str] | None:
    """(device_id, kind) of a contract topic, or None for anything else (never raises)."""
    if not name.startswith(PREFIX + "/"):
        return None
    device_id, sep, kind = name[len(PREFIX) + 1 :].partition("/")
    if not sep or kind not in _KINDS or not _DEVICE_ID.fullmatch(device_id):
        return None
    return device_id, kind


def client_id(device_id: str, *, federated: bool = False) -> str:
    return f"{device_id}.fl" if federated else device_id


def server_filters() -> list[str]:
    """What a server subscribes to (wrap each in `shared()` for replicas)."""
    return [f"{PREFIX}/+/{kind}" for kind in DEVICE_PUBLISHES]


def shared(filter_: str, group: str = SHARE_GROUP) -> str:
    return f"$share/{group}/{filter_}"


def device_acl() -> list[str]:
    """Mosquitto ACL `pattern` lines pinning each device (username = certificate CN) to its topics."""
    lines = [f"pattern write {PREFIX}/%u/{kind}" for kind in DEVICE_PUBLISHES]
    lines += [f"pattern read {PREFIX}/%u/{kind}" for kind in DEVICE_SUBSCRIBES]
    return lines


def server_acl(username: str) -> list[str]:
    """Mosquitto ACL lines for the server's identity: read what devices publish, write the rest."""
    lines = [f"user {username}"]
    lines += [f"topic read {PREFIX}/+/{kind}" for kind in DEVICE_PUBLISHES]
    lines += [f"topic write {PREFIX}/+/{kind}" for kind in DEVICE_SUBSCRIBES]
    return lines
