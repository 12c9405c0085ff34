"""`GET /api/v1/replicas` (viewer): the replicas on this database and who holds each singleton.

Read-only view over `server_replica`, `coordination_lease` and `device_presence`, judged by the
database's clock (replicas need not agree on the time): a replica is alive while its heartbeat is
younger than `replica_ttl_s`; a lease is held while it has not expired. Answers the questions an
operator asks during an incident: how many replicas are up, which one runs the TUF signer or the
federated runner right now, how many gRPC streams each holds. Does not change anything.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from fleet_server.api.deps import Viewer
from fleet_server.coordination.leases import db_now
from fleet_server.coordination.models import CoordinationLease, DevicePresence, ServerReplica

router = APIRouter(tags=["replicas"])

_R = ServerReplica.__table__  # type: ignore[attr-defined]
_L = CoordinationLease.__table__  # type: ignore[attr-defined]
_P = DevicePresence.__table__  # type: ignore[attr-defined]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def replicas_view(conn: Connection, *, this_replica: str, replica_ttl_s: float) -> dict[str, Any]:
    """The view as plain data (also what `edgeloop replicas --json` prints)."""
    now = db_now(conn)
    cutoff = now - timedelta(seconds=replica_ttl_s)
    by_replica = (
        select(_P.c.replica_id, func.count()).where(_P.c.replica_id.is_not(None)).group_by(_P.c.replica_id)
    )
    streams: dict[str, int] = {r: int(n) for r, n in conn.execute(by_replica).tuples()}
    replicas = [
        {
            "id": row.id,
            "hostname": row.hostname,
            "pid": row.pid,
            "version": row.version,
            "started_at": _iso(row.started_at),
            "heartbeat_at": _iso(row.heartbeat_at),
            "alive": row.heartbeat_at is not None and row.heartbeat_at > cutoff,
            "grpc_streams": streams.get(row.id, 0),
        }
        for row in conn.execute(select(_R).order_by(_R.c.started_at, _R.c.id))
    ]
    leases = [
        {
            "name": row.name,
            "holder": row.holder,
            "token": row.token,
            "held": bool(row.holder) and row.expires_at is not None and row.expires_at > now,
            "expires_at": _iso(row.expires_at),
            "acquired_at": _iso(row.acquired_at),
        }
        for row in conn.execute(select(_L).order_by(_L.c.name))
    ]
    return {"this_replica": this_replica, "now": now.isoformat(), "replicas": replicas, "leases": leases}


@router.get("/replicas", summary="server replicas and singleton leases")
def list_replicas(request: Request, _: Viewer) -> dict[str, Any]:
    state = request.app.state
    with state.engine.connect() as conn:
        return replicas_view(
            conn, this_replica=getattr(state, "replica_id", ""), replica_ttl_s=state.settings.replica_ttl_s
        )
