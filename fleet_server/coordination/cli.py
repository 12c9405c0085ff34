"""`edgeloop replicas`: the server replicas on this database and who holds each singleton lease
(GET /api/v1/replicas). A rich table for people; the API's JSON with `--json`."""

from __future__ import annotations

import argparse
from typing import Any, Protocol

from rich.console import Console
from rich.table import Table


class Api(Protocol):
    def request(self, method: str, path: str, **kwargs: Any) -> Any: ...


def replicas(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    view = api.request("GET", "/replicas")
    if ns.json:
        return view
    table = Table(title=f"{sum(r['alive'] for r in view['replicas'])} replica(s) alive")
    for column in ("replica", "host", "pid", "version", "alive", "gRPC streams", "heartbeat"):
        table.add_column(column)
    for r in view["replicas"]:
        here = " (this one)" if r["id"] == view["this_replica"] else ""
        alive = "yes" if r["alive"] else "DEAD"
        table.add_row(r["id"] + here, r["hostname"], str(r["pid"]), r["version"], alive,
                      str(r["grpc_streams"]), r["heartbeat_at"] or "-")  # fmt: skip
    console.print(table)
    leases = Table(title="singleton leases")
    for column in ("lease", "holder", "fencing token", "state", "expires"):
        leases.add_column(column)
    for lease in view["leases"]:
        state = "held" if lease["held"] else ("expired" if lease["holder"] else "free")
        leases.add_row(
            lease["name"], lease["holder"] or "-", str(lease["token"]), state, lease["expires_at"] or "-"
        )
    console.print(leases)
    return None


def register(sub: Any) -> None:
    """Add `edgeloop replicas` to the operator CLI's subparsers."""
    p = sub.add_parser("replicas", help="server replicas and who holds each singleton lease")
    p.set_defaults(func=replicas)
