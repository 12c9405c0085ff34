"""`edgeloop audit list|verify|export`: the operator CLI over the audit REST API.

Same conventions as operator_cli.py (rich tables for people, the API's JSON with the global --json).
`export` streams JSON Lines to a file (or stdout) over its own HTTP connection, since the log can
be larger than one response the generic `Api` would buffer; `verify --file` checks an exported
file offline (chain links only: the head signatures stay on the server).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Protocol

import httpx
from rich.console import Console
from rich.table import Table

from fleet_server.audit.chain import ChainVerifier, Entry
from fleet_server.cliapi import CliError, CliExit, error_from, tls_verify


class Api(Protocol):
    def request(self, method: str, path: str, **kwargs: Any) -> Any: ...


def http_client(ns: argparse.Namespace) -> httpx.Client:
    """The HTTP client `export` streams with (tests hand in the in-process server's)."""
    verify = tls_verify(getattr(ns, "ca_file", None))
    return httpx.Client(base_url=ns.server.rstrip("/"), timeout=httpx.Timeout(30.0), verify=verify)


def _who(actor: dict[str, str]) -> str:
    if actor["kind"] == "operator":
        return f"{actor['name']} ({actor['role']}, {actor['id']})"
    return f"{actor['kind']}:{actor['name'] or actor['id']}"


def audit_list(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    page = api.request("GET", "/audit", params={"after_seq": ns.after, "limit": ns.limit})
    if ns.json:
        return page
    table = Table(title=f"audit log: {len(page['entries'])} entr(ies) after seq {ns.after}")
    for col in ("seq", "time (UTC)", "actor", "action", "target", "from", "status", "hash"):
        table.add_column(col)
    for e in page["entries"]:
        status = e["details"].get("status", "")
        table.add_row(
            str(e["seq"]), e["ts"][:19].replace("T", " "), _who(e["actor"]), e["action"],
            f"{e['target']['kind']}/{e['target']['id']}".strip("/"), e["source"]["ip"],
            str(status), e["hash"][:12],
        )  # fmt: skip
    console.print(table)
    if page["next_after_seq"] is not None:
        console.print(f"more: edgeloop audit list --after {page['next_after_seq']}")
    return None


def _file_entries(path: Path) -> Iterator[Entry]:
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield Entry.from_dict(json.loads(line))
            except (ValueError, KeyError, TypeError) as err:
                raise CliError(f"{path}:{lineno}: not an audit entry ({err})", CliExit.CHECK_FAILED) from err


def audit_verify(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    if ns.file:
        verifier = ChainVerifier()
        for entry in _file_entries(Path(ns.file)):
            if not verifier.feed(entry):
                break
        out = verifier.finish(None, [], None).to_dict()
    else:
        out = api.request("GET", "/audit/verify")
    if ns.json and out["ok"]:
        return out
    if ns.json:
        print(json.dumps(out))
    elif out["ok"]:
        console.print(
            f"[green]audit chain intact[/]: {out['entries']} entries, head seq {out['head_seq']}, "
            f"{out['signatures']} head signature(s) verified (last signed seq {out['last_signed_seq']})"
        )
        return None
    else:
        console.print(f"[red bold]audit chain BROKEN at seq {out['broken_seq']}[/]: {out['reason']}")
    raise CliError(f"audit chain broken at seq {out['broken_seq']}: {out['reason']}", CliExit.CHECK_FAILED)


def _stream_export(ns: argparse.Namespace, out: IO[bytes]) -> int:
    auth = {"Authorization": f"Bearer {ns.token}"} if ns.token else {}
    count = 0
    try:
        with (
            http_client(ns) as client,
            client.stream(
                "GET", "/api/v1/audit/export", params={"after_seq": ns.after}, headers=auth
            ) as resp,
        ):
            if resp.status_code >= 400:
                resp.read()
                raise error_from(resp)
            for line in resp.iter_lines():
                if line:
                    out.write(line.encode() + b"\n")
                    count += 1
    except httpx.TransportError as err:
        raise ConnectionError(f"cannot reach fleet server at {ns.server}: {err}") from err
    return count


def audit_export(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    """Stream to `<out>.partial`, then rename: a failed export never leaves a half-written file."""
    if not ns.out:
        count = _stream_export(ns, sys.stdout.buffer)
        return {"entries": count, "out": "-"} if ns.json else None
    dest = Path(ns.out)
    partial = dest.with_name(dest.name + ".partial")
    try:
        with partial.open("wb") as fh:
            count = _stream_export(ns, fh)
            fh.flush()
            os.fsync(fh.fileno())
        partial.replace(dest)
    finally:
        partial.unlink(missing_ok=True)
    if ns.json:
        return {"entries": count, "out": str(dest)}
    console.print(f"exported {count} audit entries to {dest}")
    return None


def register(sub: Any) -> None:
    """Add the ``audit`` group to the operator CLI's subparsers."""
    audit = sub.add_parser("audit", help="hash-chained audit log").add_subparsers(
        dest="command", required=True
    )
    p = audit.add_parser("list", help="entries in order, a page at a time")
    p.add_argument("--after", type=int, default=0, help="show entries after this seq")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=audit_list)
    p = audit.add_parser("verify", help="walk the chain and check the signed heads; exit 7 if broken")
    p.add_argument("--file", help="verify an exported JSON Lines file offline instead")
    p.set_defaults(func=audit_verify)
    p = audit.add_parser("export", help="write the log as JSON Lines (admin)")
    p.add_argument("--out", help="file to write (default: stdout)")
    p.add_argument("--after", type=int, default=0, help="only entries after this seq")
    p.set_defaults(func=audit_export)
