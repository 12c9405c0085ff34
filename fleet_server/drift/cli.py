"""`edgeloop drift list|show|cohorts`: operator CLI handlers over the drift REST API.

Same conventions as operator_cli.py (rich tables for people, the API's JSON unchanged with --json).
Holds no logic beyond formatting.
"""

from __future__ import annotations

import argparse
from typing import Any, Protocol

from rich.console import Console
from rich.table import Table


class Api(Protocol):
    def request(self, method: str, path: str, **kwargs: Any) -> Any: ...


def _evidence(ep: dict[str, Any]) -> str:
    return ", ".join(f"{e['channel']} {e['statistic']:.1f}/{e['threshold']:.1f}" for e in ep["evidence"][:3])


def drift_list(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    params = {k: v for k, v in (("device_id", ns.device), ("state", ns.state)) if v}
    rows = api.request("GET", "/drift/episodes", params={**params, "limit": ns.limit})
    if ns.json:
        return rows
    table = Table(title=f"{len(rows)} drift episode(s)")
    for col in (
        "id",
        "device",
        "model",
        "stream",
        "state",
        "detected",
        "severity",
        "signature",
        "verdict",
        "evidence",
    ):
        table.add_column(col)
    for ep in rows:
        table.add_row(
            str(ep["id"]),
            ep["device_id"],
            f"{ep['model_name']}:{ep['model_version']}",
            ep["stream"],
            "[red]open[/]" if ep["state"] == "open" else "closed",
            str(ep["detected_sample"]),
            f"{ep['severity']:.2f}",
            ep["signature"],
            ep["classification"] or "-",
            _evidence(ep),
        )
    console.print(table)
    return None


def drift_show(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    ep = api.request("GET", f"/drift/episodes/{ns.episode_id}")
    if ns.json:
        return ep
    for key in (
        "id",
        "device_id",
        "model_name",
        "model_version",
        "stream",
        "state",
        "signature",
        "classification",
    ):
        console.print(f"[bold]{key:>16}[/]: {ep[key] or '-'}")
    console.print(
        f"[bold]{'samples':>16}[/]: change ~{ep['start_sample']}, detected {ep['detected_sample']}, "
        f"ended {ep['end_sample'] or '-'} (of {ep['samples_seen']} seen)"
    )
    console.print(f"[bold]{'severity':>16}[/]: {ep['severity']:.2f} (budget {ep['budget_per_10k']} FA/10k)")
    table = Table(title="evidence (strongest first)")
    for col in ("channel", "kind", "statistic", "threshold", "window rows"):
        table.add_column(col)
    for e in ep["evidence"]:
        table.add_row(
            e["channel"], e["kind"], f"{e['statistic']:.2f}", f"{e['threshold']:.2f}", str(e["window_rows"])
        )
    console.print(table)
    return None


def drift_cohorts(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    rows = api.request("GET", "/drift/cohorts", params={"label": ns.label} if ns.label else {})
    if ns.json:
        return rows
    table = Table(title="drift by cohort")
    for col in ("profile", "model", "label", "devices", "alarming", "verdict", "shifted keys", "anomalies"):
        table.add_column(col)
    for c in rows:
        shift = c["population_shift"]
        table.add_row(
            c["profile"],
            f"{c['model_name']}:{c['model_version']}",
            c["label"] or "-",
            str(c["devices"]),
            str(c["alarming_devices"]),
            c["verdict"],
            ",".join(shift["keys"]) if shift else "-",
            ", ".join(f"{a['device_id']} ({a['signature']})" for a in c["anomalies"]) or "-",
        )
    console.print(table)
    return None


def register(sub: Any) -> None:
    """Add the `drift` group to the operator CLI's subparsers."""
    drift = sub.add_parser("drift", help="drift episodes and cohort verdicts").add_subparsers(
        dest="command", required=True
    )
    p = drift.add_parser("list")
    p.add_argument("--device", help="only this device")
    p.add_argument("--state", choices=["open", "closed"])
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(func=drift_list)
    p = drift.add_parser("show")
    p.add_argument("episode_id", type=int)
    p.set_defaults(func=drift_show)
    p = drift.add_parser("cohorts", help="population shift vs device anomaly per cohort")
    p.add_argument("--label", help="also group by this device label")
    p.set_defaults(func=drift_cohorts)
