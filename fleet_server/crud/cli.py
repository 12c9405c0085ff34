"""`edgeloop devices list|show|label|revoke`, `edgeloop fleet summary` and `edgeloop whoami`.

Operator CLI handlers over the device and fleet-view REST API (rich tables for people, the API's
JSON with the global --json). `devices list` filters, sorts and pages on the server
(GET /api/v1/fleet/devices); against a server without that route it falls back to GET /devices
(label selector only) and says so on stderr. Holds no logic beyond requests and formatting.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any, Protocol

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fleet_server.cliapi import ApiError, UsageError

SORTS = [s for k in ("id", "last_seen_at", "profile", "model") for s in (k, "-" + k)]
HEALTH = ["healthy", "stale", "degraded", "revoked"]
PAGE_MAX = 500


class Api(Protocol):
    def request(self, method: str, path: str, **kwargs: Any) -> Any: ...


def ago(value: str | None) -> str:
    if not value:
        return "never"
    seconds = (datetime.now(UTC) - datetime.fromisoformat(value)).total_seconds()
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def labels_text(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def parse_kv(items: list[str]) -> dict[str, str | None]:
    """`key=value` sets, `key-` removes (None)."""
    out: dict[str, str | None] = {}
    for item in items:
        if item.endswith("-") and "=" not in item:
            out[item[:-1]] = None
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"edgeloop: expected key=value or key- (to remove), got {item!r}")
        out[key] = value
    return out


def _filters(ns: argparse.Namespace) -> list[tuple[str, str]]:
    for item in ns.label or []:
        if "=" not in item or item.startswith("="):
            raise UsageError(f"edgeloop: --label expects key=value, got {item!r}")
    params = [("label", s) for s in ns.label or []]
    for key in ("q", "profile", "online", "model", "health", "sort"):
        value = getattr(ns, key)
        if value is not None:
            params.append((key, value))
    return params


def _fleet_pages(api: Api, ns: argparse.Namespace) -> tuple[int, list[dict[str, Any]]]:
    """(total, items): one page, or every page with --all."""
    params = _filters(ns)
    limit = PAGE_MAX if ns.all else ns.limit
    offset, items, total = ns.offset, [], 0
    while True:
        page = api.request("GET", "/fleet/devices", params=[*params, ("limit", limit), ("offset", offset)])
        total = int(page["total"])
        items.extend(page["items"])
        offset += len(page["items"])
        if not ns.all or not page["items"] or offset >= total:
            return total, items


def _legacy_list(api: Api, ns: argparse.Namespace) -> tuple[int, list[dict[str, Any]]]:
    """GET /devices: a server from before the fleet view (label selector and paging only)."""
    ignored = [k for k in ("q", "profile", "online", "model", "health", "sort") if getattr(ns, k) is not None]
    if ignored:
        print(
            f"edgeloop: this server has no /fleet/devices; ignoring --{', --'.join(ignored)}",
            file=sys.stderr,
        )
    params: list[tuple[str, Any]] = [("label", s) for s in ns.label or []]
    params += [("limit", 5000 if ns.all else ns.limit), ("offset", ns.offset)]
    rows = api.request("GET", "/devices", params=params)
    return ns.offset + len(rows), rows


def devices_list(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    try:
        total, rows = _fleet_pages(api, ns)
    except ApiError as err:
        if err.status != 404 or err.detail != "Not Found":  # a missing route, not a missing thing
            raise
        total, rows = _legacy_list(api, ns)
    if ns.json:
        return rows
    first = ns.offset + 1 if rows else 0
    table = Table(title=f"Showing {first}-{ns.offset + len(rows)} of {total} device(s)")
    cols = ("id", "profile", "status", "online", "health", "model", "last seen", "agent", "queued", "labels")
    for col in cols:
        table.add_column(col)
    for d in rows:
        table.add_row(
            escape(d["id"]),
            escape(d["profile"]),
            d["status"],
            "[green]yes[/]" if d["online"] else "[red]no[/]",
            d.get("health") or "-",
            escape(d.get("model") or "-"),
            ago(d["last_seen_at"]),
            escape(d["agent_version"]),
            str(d["observed"].get("telemetry_queued", 0)),
            escape(labels_text(d["labels"])),
        )
    console.print(table)
    if ns.offset + len(rows) < total and not ns.all:
        console.print(f"more: --offset {ns.offset + len(rows)} (or --all)")
    return None


def devices_show(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    device = api.request("GET", f"/devices/{ns.device_id}")
    if ns.json:
        return device
    for key in ("id", "profile", "status", "online", "agent_version", "enrolled_at", "last_seen_at"):
        console.print(f"[bold]{key:>16}[/]: {escape(str(device[key]))}")
    console.print(f"[bold]{'labels':>16}[/]: {escape(labels_text(device['labels'])) or '-'}")
    console.print(
        f"[bold]{'generation':>16}[/]: desired {device['desired_generation']}, "
        f"applied {device['observed'].get('applied_generation', 0)}"
    )
    console.print(f"[bold]{'telemetry':>16}[/]: dropped {device['telemetry_dropped_total']}")
    console.print_json(json.dumps(device["observed"]))
    return None


def devices_label(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    body = {"labels": parse_kv(ns.labels)}
    device = api.request("PATCH", f"/devices/{ns.device_id}/labels", json=body)
    if ns.json:
        return device
    console.print(
        f"{device['id']}: labels {labels_text(device['labels']) or '-'} "
        f"(generation {device['desired_generation']})",
        markup=False,
    )
    return None


def devices_revoke(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    device = api.request("POST", f"/devices/{ns.device_id}/revoke", json={"reason": ns.reason or ""})
    if ns.json:
        return device
    console.print(f"device {ns.device_id} revoked" + (f" ({ns.reason})" if ns.reason else ""), markup=False)
    return None


def _counts_table(title: str, counts: dict[str, int]) -> Table:
    table = Table(title=title)
    table.add_column(title.rsplit(maxsplit=1)[-1])
    table.add_column("devices", justify="right")
    for key, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        table.add_row(escape(key), str(n))
    return table


def fleet_summary(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    out = api.request("GET", "/fleet/summary")
    if ns.json:
        return out
    console.print(
        f"[bold]{out['total']}[/] device(s): [green]{out['online']} online[/], "
        f"[red]{out['offline']} offline[/], {out['revoked']} revoked"
    )
    for key in ("transport", "profile", "model", "health"):
        console.print(_counts_table(f"by {key}", out.get(f"by_{key}", {})))
    labels = Table(title="top labels")
    for col in ("key", "value", "devices"):
        labels.add_column(col)
    for row in out.get("by_label", []):
        labels.add_row(escape(row["key"]), escape(row["value"]), str(row["count"]))
    console.print(labels)
    return None


def whoami(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    out = api.request("GET", "/me")
    if ns.json:
        return out
    console.print(
        f"{out['name']} ({out['role']}), token {out['id']}, expires {out.get('expires_at') or 'never'}",
        markup=False,
    )
    return None


def register(sub: Any) -> None:
    """Add the `devices`, `fleet` and `whoami` commands to the operator CLI's subparsers."""
    devices = sub.add_parser("devices", help="devices: list, show, label, revoke").add_subparsers(
        dest="command", required=True
    )
    p = devices.add_parser("list", help="filtered, sorted and paged on the server")
    p.add_argument("--label", action="append", help="key=value selector (repeat to AND)")
    p.add_argument("--q", "--search", dest="q", help="search device ids")
    p.add_argument("--profile")
    p.add_argument("--online", choices=["true", "false"])
    p.add_argument("--model", help="deployed model, e.g. digits@3 (none: no model)")
    p.add_argument("--health", choices=HEALTH)
    p.add_argument("--sort", choices=SORTS, help="a leading - sorts descending: write --sort=-id")
    p.add_argument("--limit", type=int, default=50, help=f"page size (at most {PAGE_MAX}; default 50)")
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--all", action="store_true", help="every page (with --json: one list)")
    p.set_defaults(func=devices_list)
    p = devices.add_parser("show")
    p.add_argument("device_id")
    p.set_defaults(func=devices_show)
    p = devices.add_parser("label", help="set key=value, remove key-")
    p.add_argument("device_id")
    p.add_argument("labels", nargs="+")
    p.set_defaults(func=devices_label)
    p = devices.add_parser("revoke", help="revoke the device's certificate: cut off on every transport")
    p.add_argument("device_id")
    p.add_argument("--reason", help="why (kept in the audit log)")
    p.set_defaults(func=devices_revoke)

    fleet = sub.add_parser("fleet", help="the fleet at a glance").add_subparsers(
        dest="command", required=True
    )
    p = fleet.add_parser("summary", help="counts by transport, profile, model, health and label")
    p.set_defaults(func=fleet_summary)

    p = sub.add_parser("whoami", help="the token's name and role")
    p.set_defaults(func=whoami)
