"""Tables of the coordination package (migration 0016).

- `coordination_lease`: one row per singleton job (TUF signer, compile worker, federated runner,
  drift trigger, audit head signer...). `token` is the fencing token, bumped at every claim.
- `server_replica`: one row per running replica, heartbeated; a replica whose heartbeat is older
  than the replica TTL is dead, and so are the gRPC sessions it held.
- `device_presence`: who is connected where. gRPC rows name the replica holding the stream;
  MQTT rows have no replica (the broker holds the session; presence follows the device's status
  messages), so a replica dying does not mark MQTT devices offline.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column
from sqlmodel import Field, SQLModel

from fleet_server.models import _ts


class CoordinationLease(SQLModel, table=True):
    __tablename__ = "coordination_lease"

    name: str = Field(primary_key=True, max_length=128)
    holder: str = Field(default="", max_length=128)  # replica id; "" = free
    token: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    expires_at: datetime | None = _ts()
    acquired_at: datetime | None = _ts()


class ServerReplica(SQLModel, table=True):
    __tablename__ = "server_replica"

    id: str = Field(primary_key=True, max_length=128)
    hostname: str = Field(default="", max_length=255)
    pid: int = 0
    version: str = Field(default="", max_length=64)
    started_at: datetime | None = _ts()
    heartbeat_at: datetime | None = _ts()


class DevicePresence(SQLModel, table=True):
    __tablename__ = "device_presence"

    device_id: str = Field(primary_key=True, max_length=128)
    transport: str = Field(max_length=8)  # "grpc" | "mqtt"
    replica_id: str | None = Field(default=None, index=True, max_length=128)  # None for MQTT
    since: datetime | None = _ts()
