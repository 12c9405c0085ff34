"""`edgeloop`: the operator CLI over the REST API (devices, bootstrap and operator tokens).

`tokens` are bootstrap tokens (create, list, revoke: what enrolls a device); `operator-tokens`
are the API's own credentials (list, create, rotate, revoke: admins only). A secret is printed
once, by the command that creates it.

Reads the server URL and token from `--server`/`--token` or EDGELOOP_SERVER/EDGELOOP_TOKEN.
Human output is a rich table; `--json` prints the API's JSON unchanged for scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from fleet_server.audit.cli import register as register_audit
from fleet_server.drift.cli import register as register_drift
from fleet_server.federated.cli import register as register_fl
from fleet_server.ota.cli import register as register_ota
from fleet_server.registry.cli import register as register_models
from fleet_server.rollouts.cli import register as register_rollouts

EXIT_API_ERROR = 33
EXIT_UNREACHABLE = 34


class ApiError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status


class ApiTimeoutError(ConnectionError, TimeoutError):
    """No progress within the idle timeout: nothing sent or received for that long."""


class Api:
    """The REST client of every command.

    `timeout_s` bounds each wait for progress, never a whole request: httpx applies its read and
    write timeouts per operation (one chunk sent, the next bytes received), so a large upload on a
    slow link that keeps moving never times out, and a stalled one fails after `timeout_s`. A call
    that waits on server work (e.g. signing a release) passes its own `timeout=`.
    """

    def __init__(self, base_url: str, token: str, timeout_s: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        timeout = httpx.Timeout(connect=10.0, read=timeout_s, write=timeout_s, pool=10.0)
        self._client = httpx.Client(
            base_url=base_url.rstrip("/") + "/api/v1", headers=headers, timeout=timeout
        )

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self._client.request(method, path, **kwargs)
        except httpx.TimeoutException as err:
            raise ApiTimeoutError(
                f"{method} {path}: no progress from {self._client.base_url} within the timeout ({err!r})"
            ) from err
        except httpx.TransportError as err:
            raise ConnectionError(f"cannot reach fleet server at {self._client.base_url}: {err}") from err
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("detail", resp.text)
            except ValueError:
                detail = resp.text
            raise ApiError(resp.status_code, detail if isinstance(detail, str) else json.dumps(detail))
        return resp.json()


def _ago(value: str | None) -> str:
    if not value:
        return "never"
    seconds = (datetime.now(UTC) - datetime.fromisoformat(value)).total_seconds()
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _labels(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _kv(items: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for item in items:
        if item.endswith("-") and "=" not in item:
            out[item[:-1]] = None
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"edgeloop: expected key=value or key- (to remove), got {item!r}")
        out[key] = value
    return out


def devices_list(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    params = [("label", s) for s in ns.label or []]
    rows = api.request("GET", "/devices", params=params)
    if ns.json:
        return rows
    table = Table(title=f"{len(rows)} device(s)")
    for col in ("id", "profile", "status", "online", "last seen", "agent", "queued", "dropped", "labels"):
        table.add_column(col)
    for d in rows:
        table.add_row(
            d["id"],
            d["profile"],
            d["status"],
            "[green]yes[/]" if d["online"] else "[red]no[/]",
            _ago(d["last_seen_at"]),
            d["agent_version"],
            str(d["observed"].get("telemetry_queued", 0)),
            str(d["telemetry_dropped_total"]),
            _labels(d["labels"]),
        )
    console.print(table)
    return None


def devices_show(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    device = api.request("GET", f"/devices/{ns.device_id}")
    if ns.json:
        return device
    for key in ("id", "profile", "status", "online", "agent_version", "enrolled_at", "last_seen_at"):
        console.print(f"[bold]{key:>16}[/]: {device[key]}")
    console.print(f"[bold]{'labels':>16}[/]: {_labels(device['labels']) or '-'}")
    console.print(
        f"[bold]{'generation':>16}[/]: desired {device['desired_generation']}, "
        f"applied {device['observed'].get('applied_generation', 0)}"
    )
    console.print(f"[bold]{'telemetry':>16}[/]: dropped {device['telemetry_dropped_total']}")
    console.print_json(json.dumps(device["observed"]))
    return None


def devices_label(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    device = api.request("PATCH", f"/devices/{ns.device_id}/labels", json={"labels": _kv(ns.labels)})
    if ns.json:
        return device
    console.print(
        f"{device['id']}: labels {_labels(device['labels']) or '-'} "
        f"(generation {device['desired_generation']})"
    )
    return None


def devices_revoke(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    device = api.request("POST", f"/devices/{ns.device_id}/revoke", json={"reason": ns.reason or ""})
    if ns.json:
        return device
    console.print(f"device {ns.device_id} revoked" + (f" ({ns.reason})" if ns.reason else ""))
    return None


def tokens_create(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    labels = {k: v for k, v in _kv(ns.label or []).items() if v is not None}
    body = {"labels": labels, "profile": ns.profile or "", "ttl_s": ns.ttl}
    created = api.request("POST", "/bootstrap-tokens", json=body)
    if ns.json:
        return created
    console.print(f"bootstrap token {created['id']} (one use, expires {created['expires_at']}):")
    console.print(created["token"], soft_wrap=True)
    return None


def tokens_list(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    rows = api.request("GET", "/bootstrap-tokens")
    if ns.json:
        return rows
    table = Table(title="bootstrap tokens")
    for col in ("id", "labels", "profile", "expires", "used by", "revoked"):
        table.add_column(col)
    for t in rows:
        table.add_row(
            t["id"],
            _labels(t["labels"]),
            t["profile"] or "any",
            t["expires_at"],
            t["used_by_device"] or "-",
            t.get("revoked_at") or "-",
        )
    console.print(table)
    return None


def tokens_revoke(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    row = api.request("POST", f"/bootstrap-tokens/{ns.token_id}/revoke")
    if ns.json:
        return row
    console.print(
        f"bootstrap token {row['id']} revoked at {row['revoked_at']}: it can no longer enroll a device"
    )
    return None


def _state(t: dict[str, Any]) -> str:
    now = datetime.now(UTC)
    if t["revoked_at"] and datetime.fromisoformat(t["revoked_at"]) <= now:
        return "revoked"
    if t["expires_at"] and datetime.fromisoformat(t["expires_at"]) <= now:
        return "expired"
    if t["revoked_at"]:
        return f"active until {t['revoked_at']} (rotated)"
    return "active"


def operator_tokens_list(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    rows = api.request("GET", "/operator-tokens")
    if ns.json:
        return rows
    table = Table(title=f"{len(rows)} operator token(s)")
    for col in (
        "id",
        "name",
        "role",
        "state",
        "created by",
        "created",
        "expires",
        "last used",
        "rotated from",
    ):
        table.add_column(col)
    for t in rows:
        table.add_row(
            t["id"],
            t["name"],
            t["role"],
            _state(t),
            t["created_by"] or "-",
            t["created_at"] or "-",
            t["expires_at"] or "never",
            _ago(t["last_used_at"]),
            t["rotated_from"] or "-",
        )
    console.print(table)
    return None


def _print_secret(console: Console, created: dict[str, Any], what: str) -> None:
    expires = created["expires_at"] or "never"
    console.print(f"{what} {created['id']} ({created['name']}, {created['role']}, expires {expires}).")
    console.print("The token is shown only this once; store it now:")
    console.print(created["token"], soft_wrap=True)


def operator_tokens_create(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    created = api.request(
        "POST", "/operator-tokens", json={"name": ns.name, "role": ns.role, "ttl_s": ns.ttl}
    )
    if ns.json:
        return created
    _print_secret(console, created, "operator token")
    return None


def operator_tokens_rotate(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    created = api.request("POST", f"/operator-tokens/{ns.token_id}/rotate", json={"grace_s": ns.grace})
    if ns.json:
        return created
    when = f"in {ns.grace}s" if ns.grace else "now"
    _print_secret(console, created, f"rotated {ns.token_id} (old token stops working {when}) into")
    return None


def operator_tokens_revoke(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    row = api.request("POST", f"/operator-tokens/{ns.token_id}/revoke")
    if ns.json:
        return row
    console.print(f"operator token {row['id']} ({row['name']}, {row['role']}) revoked at {row['revoked_at']}")
    return None


def _register_tokens(sub: Any) -> None:
    """`tokens` (bootstrap: create, list, revoke) and `operator-tokens` (list, create, rotate, revoke)."""
    tokens = sub.add_parser("tokens").add_subparsers(dest="command", required=True)
    p = tokens.add_parser("create", help="mint a one-time bootstrap token for enrolling a device")
    p.add_argument("--label", action="append", help="label applied to the enrolled device (key=value)")
    p.add_argument("--profile", help="only devices of this profile may use it")
    p.add_argument("--ttl", type=int, default=24 * 3600, help="seconds until it expires")
    p.set_defaults(func=tokens_create)
    p = tokens.add_parser("list", help="bootstrap tokens")
    p.set_defaults(func=tokens_list)
    p = tokens.add_parser("revoke", help="revoke an unused bootstrap token: it can no longer enroll")
    p.add_argument("token_id")
    p.set_defaults(func=tokens_revoke)

    optok = sub.add_parser("operator-tokens", help="the API's credentials (admins only)")
    ops = optok.add_subparsers(dest="command", required=True)
    p = ops.add_parser("list", help="never shows secrets")
    p.set_defaults(func=operator_tokens_list)
    p = ops.add_parser("create", help="mint an operator token (the secret is printed once)")
    p.add_argument("name")
    p.add_argument("--role", choices=["viewer", "operator", "admin"], default="viewer")
    p.add_argument("--ttl", type=int, default=None, help="seconds until it expires (default: never)")
    p.set_defaults(func=operator_tokens_create)
    p = ops.add_parser("rotate", help="new secret, same name and role; the old one is revoked")
    p.add_argument("token_id")
    p.add_argument("--grace", type=int, default=0, help="seconds the old token keeps working (default 0)")
    p.set_defaults(func=operator_tokens_rotate)
    p = ops.add_parser("revoke", help="revoke at once (never the last active admin token)")
    p.add_argument("token_id")
    p.set_defaults(func=operator_tokens_revoke)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeloop", description="edgeloop fleet operator CLI")
    parser.add_argument("--server", default=os.environ.get("EDGELOOP_SERVER", "http://127.0.0.1:8080"))
    parser.add_argument("--token", default=os.environ.get("EDGELOOP_TOKEN", ""))
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--idle-timeout",
        dest="idle_timeout_s",
        type=float,
        default=float(os.environ.get("EDGELOOP_TIMEOUT_S", "30")),
        help="seconds without progress (nothing sent or received) before a request fails (default 30)",
    )
    sub = parser.add_subparsers(dest="group", required=True)

    devices = sub.add_parser("devices").add_subparsers(dest="command", required=True)
    p = devices.add_parser("list")
    p.add_argument("--label", action="append", help="key=value selector (repeat to AND)")
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

    _register_tokens(sub)

    register_drift(sub)
    register_ota(sub)
    register_fl(sub)
    register_models(sub)
    register_audit(sub)
    register_rollouts(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    console = Console()
    api = Api(ns.server, ns.token, timeout_s=ns.idle_timeout_s)
    try:
        result = ns.func(api, ns, console)
    except ApiError as err:
        print(f"edgeloop: {err}", file=sys.stderr)
        return EXIT_API_ERROR
    except ConnectionError as err:
        print(f"edgeloop: {err}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if ns.json:
        print(json.dumps(result, indent=None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
