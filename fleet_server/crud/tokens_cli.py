"""`edgeloop tokens create|list|revoke` (bootstrap tokens: what enrolls a device) and
`edgeloop operator-tokens list|create|rotate|revoke` (the API's own credentials: admins only).

Operator CLI handlers over the token REST API (rich tables for people, the API's JSON with the
global --json). A secret is printed once, by the command that creates it.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any, Protocol

from rich.console import Console
from rich.table import Table

from fleet_server.crud.cli import ago, labels_text, parse_kv


class Api(Protocol):
    def request(self, method: str, path: str, **kwargs: Any) -> Any: ...


def tokens_create(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    labels = {k: v for k, v in parse_kv(ns.label or []).items() if v is not None}
    body = {"labels": labels, "profile": ns.profile or "", "ttl_s": ns.ttl}
    created = api.request("POST", "/bootstrap-tokens", json=body)
    if ns.json:
        return created
    console.print(f"bootstrap token {created['id']} (one use, expires {created['expires_at']}):")
    console.print(created["token"], soft_wrap=True, markup=False, highlight=False)
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
            labels_text(t["labels"]),
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
            ago(t["last_used_at"]),
            t["rotated_from"] or "-",
        )
    console.print(table)
    return None


def _print_secret(console: Console, created: dict[str, Any], what: str) -> None:
    expires = created["expires_at"] or "never"
    console.print(f"{what} {created['id']} ({created['name']}, {created['role']}, expires {expires}).")
    console.print("The token is shown only this once; store it now:")
    console.print(created["token"], soft_wrap=True, markup=False, highlight=False)


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


def register(sub: Any) -> None:
    """`tokens` (bootstrap: create, list, revoke) and `operator-tokens` (list, create, rotate, revoke)."""
    tokens = sub.add_parser("tokens", help="bootstrap tokens: what enrolls a device").add_subparsers(
        dest="command", required=True
    )
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
