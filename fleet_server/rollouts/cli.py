"""`edgeloop rollout create|list|status|pause|resume|abort|rollback|start`: operator CLI over the
rollout REST API.

Same conventions as operator_cli.py (rich tables for people, the API's JSON with the global
--json). `status --watch` redraws a live view (batches, device progress, the newest gate verdicts)
until the rollout ends or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from typing import Any, Protocol

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from fleet_server.cliapi import STREAMED, CliError, CliExit, UsageError

TERMINAL = {"completed", "aborted", "rolled_back"}
_STYLE = {
    "completed": "green",
    "running": "cyan",
    "waiting": "cyan",
    "paused": "yellow",
    "rolling_back": "red",
    "rolled_back": "red",
    "aborted": "red",
    "draft": "dim",
}
_VERDICT = {"pass": "green", "fail": "bold red", "not_enough_data": "yellow", "inconclusive": "yellow"}


class Api(Protocol):
    def request(self, method: str, path: str, **kwargs: Any) -> Any: ...


def _numbers(text: str | None, kind: type) -> list[Any]:
    if not text:
        return []
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise UsageError(f"edgeloop: expected comma-separated numbers, got {text!r}") from err


def _pairs(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"edgeloop: expected key=value, got {item!r}")
        out[key] = value
    return out


def parse_window(text: str) -> dict[str, Any]:
    """`"sat,sun 22:00-04:00 Europe/Berlin"` -> a window (days, start, end, tz; tz default UTC).
    The server checks the values (a bad day, time or zone is its 422 with the field)."""
    parts = text.split()
    if len(parts) not in (2, 3) or "-" not in parts[1]:
        raise UsageError(
            f"edgeloop: bad window {text!r}: use 'DAYS HH:MM-HH:MM [TZ]', e.g. 'sat,sun 22:00-04:00 UTC'"
        )
    start, _, end = parts[1].partition("-")
    days: list[Any] = [int(d) if d.isdigit() else d.lower() for d in parts[0].split(",") if d]
    return {"days": days, "start": start, "end": end, "tz": parts[2] if len(parts) == 3 else "UTC"}


def rollout_create(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    batches: dict[str, Any] = {"min_per_batch": ns.min_per_batch, "seed": ns.seed or ""}
    if ns.counts:
        batches["counts"] = _numbers(ns.counts, int)
    else:
        batches["percents"] = _numbers(ns.percents or "1,10,50,100", float)
    if ns.budget:
        batches["budget"] = {k: float(v) for k, v in _pairs(ns.budget).items()}
    gates = {
        k: v
        for k, v in {
            "alpha": ns.alpha,
            "min_devices": ns.min_devices,
            "silent_timeout_s": ns.silent_timeout,
            "max_failure_rate": ns.max_failure_rate,
            "min_window_s": ns.min_window,
            "max_wait_s": ns.max_wait,
        }.items()
        if v is not None
    }
    body = {
        "name": ns.name or "",
        "releases": ns.release,
        "on_breach": ns.on_breach,
        "start": not ns.draft,
        "selector": {"labels": _pairs(ns.label), "profiles": ns.profile or []},
        "batches": batches,
        "gates": gates,
        "windows": {
            "download": [parse_window(w) for w in ns.download_window or []],
            "apply": [parse_window(w) for w in ns.apply_window or []],
        },
    }
    out = api.request("POST", "/rollouts", json=body)
    if ns.json:
        return out
    console.print(f"rollout [bold]{out['id']}[/] {out['state']}: batches {[b['size'] for b in out['plan']]}")
    return None


def rollout_list(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    rows = api.request("GET", "/rollouts", params={"state": ns.state} if ns.state else {})
    if ns.json:
        return rows
    table = Table(title=f"{len(rows)} rollout(s)")
    for c in ("id", "name", "state", "batch", "releases", "devices", "on breach", "created", "reason"):
        table.add_column(c)
    for r in rows:
        devices = ", ".join(f"{k} {v}" for k, v in sorted(r["devices"].items()))
        table.add_row(
            r["id"],
            r["name"],
            Text(r["state"], style=_STYLE.get(r["state"], "")),
            f"{r['batch'] + 1}/{r['batches']}",
            ",".join(str(x["seq"]) for x in r["releases"]),
            devices,
            r["on_breach"],
            (r["created_at"] or "")[:19].replace("T", " "),
            r["reason"][:60],
        )
    console.print(table)
    return None


def render(out: dict[str, Any]) -> Group:
    """The status view of one rollout (also the live view of `status --watch`)."""
    total = sum(out["devices"].values()) or 1
    done = sum(v for k, v in out["devices"].items() if k in ("committed", "rolled_back"))
    head = Text.assemble(
        (out["id"], "bold"),
        f" {out['name']}  ",
        (out["state"], _STYLE.get(out["state"], "")),
        f"  batch {out['batch'] + 1}/{out['batches']}  on breach: {out['on_breach']}",
    )
    lines: list[Any] = [
        head,
        ProgressBar(total=total, completed=done, width=60),
        Text(f"{done}/{total} devices"),
    ]
    if out["reason"]:
        lines.append(Text(f"reason: {out['reason']}", style="yellow"))
    batches = Table(title="batches")
    for c in ("#", "size", "assigned", "settled", "looks", "devices"):
        batches.add_column(c)
    for b in out["plan"]:
        devices = ", ".join(f"{k} {v}" for k, v in sorted(b["devices"].items()))
        marker = "▶ " if b["index"] == out["batch"] else ""
        batches.add_row(
            f"{marker}{b['index']}",
            str(b["size"]),
            (b["assigned_at"] or "-")[11:19],
            (b["settled_at"] or "-")[11:19],
            str(b["looks"]),
            devices,
        )
    lines.append(batches)
    if out["latest_gates"]:
        gates = Table(title=f"gates of batch {out['batch']}")
        for c in ("gate", "verdict", "p / rate", "threshold", "effect", "samples (canary/control)", "detail"):
            gates.add_column(c)
        for g in out["latest_gates"]:
            gates.add_row(
                g["gate"],
                Text(g["verdict"], style=_VERDICT.get(g["verdict"], "")),
                f"{g['p_value']:.3g}",
                f"{g['threshold']:.3g}",
                f"{g['effect']:+.3g}",
                f"{g['samples_canary']}/{g['samples_control']}",
                g["detail"][:70],
            )
        lines.append(gates)
    if out["rollback"]:
        for prev, rb in sorted(out["rollback"].items()):
            n = len(rb["devices"])
            lines.append(Text(f"rollback: release {rb['release_seq']} (bytes of {prev}) to {n} device(s)"))
    return Group(*lines)


def rollout_status(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    if ns.watch:
        return rollout_watch(api, ns, console)
    out = api.request("GET", f"/rollouts/{ns.rollout_id}")
    if ns.json:
        return out
    console.print(render(out))
    return None


def _fingerprint(out: dict[str, Any]) -> str:
    """What a watcher counts as a change: everything but the row's bookkeeping timestamp."""
    return json.dumps({k: v for k, v in out.items() if k != "updated_at"}, sort_keys=True, default=str)


def _polls(api: Api, ns: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """The rollout, fetched every `ns.interval` seconds, until (and including) a terminal state."""
    while True:
        out = api.request("GET", f"/rollouts/{ns.rollout_id}")
        yield out
        if out["state"] in TERMINAL:
            return
        time.sleep(ns.interval)


def rollout_watch(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    """Follow a rollout until it ends: a live view for people; with --json one JSON object per
    line each time it changes (state, batch, device counts, gate verdicts). With --exit-status,
    ending in a state other than completed exits 7 (check failed)."""
    last: dict[str, Any] = {}
    if ns.json:
        seen = ""
        for out in _polls(api, ns):
            if (fp := _fingerprint(out)) != seen:
                print(json.dumps(out), flush=True)
                seen, last = fp, out
    else:
        with Live(console=console, refresh_per_second=4, transient=False) as live:
            for out in _polls(api, ns):
                live.update(render(out))
                last = out
    if getattr(ns, "exit_status", False) and last.get("state") != "completed":
        raise CliError(f"rollout {ns.rollout_id} ended {last.get('state')}", CliExit.CHECK_FAILED)
    return STREAMED if ns.json else None


def _act(action: str) -> Any:
    def run(api: Api, ns: argparse.Namespace, console: Console) -> Any:
        out = api.request("POST", f"/rollouts/{ns.rollout_id}/{action}", json={"reason": ns.reason or ""})
        if ns.json:
            return out
        console.print(f"{out['id']}: {out['state']}" + (f" ({out['reason']})" if out["reason"] else ""))
        return None

    return run


def register(sub: Any) -> None:
    """Add the `rollout` group to the operator CLI's subparsers."""
    group = sub.add_parser("rollout", help="phased rollouts gated on model metrics")
    cmds = group.add_subparsers(dest="command", required=True)
    p = cmds.add_parser("create", help="roll releases out in batches (one release per profile)")
    p.add_argument(
        "--release", type=int, action="append", required=True, help="release seq (repeat per profile)"
    )
    p.add_argument("--name")
    p.add_argument("--label", action="append", help="device selector key=value (repeat to AND)")
    p.add_argument("--profile", action="append", help="only devices of this profile (repeat)")
    p.add_argument("--percents", help="cumulative batch percents, e.g. 1,10,50,100 (the default)")
    p.add_argument("--counts", help="batch sizes, e.g. 2,20 (the rest form one last batch)")
    p.add_argument("--min-per-batch", type=int, default=1)
    p.add_argument("--seed", help="batch order seed (default: none)")
    p.add_argument(
        "--budget", action="append", help="label=percent: at most that share of one label value per batch"
    )
    p.add_argument("--on-breach", choices=["pause", "rollback"], default="pause")
    p.add_argument(
        "--draft", action="store_true", help="create without starting (start it with `rollout start`)"
    )
    p.add_argument("--alpha", type=float)
    p.add_argument("--min-devices", type=int)
    p.add_argument("--min-window", type=float, help="seconds of metrics before a batch is judged")
    p.add_argument("--max-wait", type=float, help="seconds to wait for metrics before on_no_data applies")
    p.add_argument("--silent-timeout", type=float, help="seconds until a silent device counts as failed")
    p.add_argument("--max-failure-rate", type=float)
    p.add_argument(
        "--download-window",
        action="append",
        help="'DAYS HH:MM-HH:MM [TZ]' (repeatable): batches are assigned only inside one",
    )
    p.add_argument(
        "--apply-window",
        action="append",
        help="'DAYS HH:MM-HH:MM [TZ]' (repeatable): devices switch to the release only inside one",
    )
    p.set_defaults(func=rollout_create)
    p = cmds.add_parser("list")
    p.add_argument("--state")
    p.set_defaults(func=rollout_list)
    p = cmds.add_parser("status", help="one rollout: batches, devices, gate verdicts")
    p.add_argument("rollout_id")
    p.add_argument("--watch", action="store_true", help="live view until the rollout ends (as `watch`)")
    p.add_argument("--interval", type=float, default=2.0)
    p.set_defaults(func=rollout_status)
    p = cmds.add_parser(
        "watch", help="follow a rollout until it ends (--json: one JSON object per line per change)"
    )
    p.add_argument("rollout_id")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between polls (default 1)")
    p.add_argument("--exit-status", action="store_true", help="exit 7 unless the rollout ends completed")
    p.set_defaults(func=rollout_watch)
    for action in ("start", "pause", "resume", "abort", "rollback"):
        p = cmds.add_parser(action)
        p.add_argument("rollout_id")
        p.add_argument("--reason")
        p.set_defaults(func=_act(action))
