"""`edgeloop fl start|status|history|cancel` (alias `stop`): operator CLI handlers over the
federated REST API.

Same conventions as operator_cli.py (rich tables for people, the API's JSON unchanged with --json).
"""

from __future__ import annotations

import argparse
from typing import Any, Protocol

from rich.console import Console
from rich.table import Table

from fleet_server.cliapi import UsageError


class Api(Protocol):
    def request(self, method: str, path: str, **kwargs: Any) -> Any: ...


def fl_start(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    labels: dict[str, str] = {}
    for item in ns.label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"edgeloop: --label expects key=value, got {item!r}")
        labels[key] = value
    body = {
        "strategy": ns.strategy,
        "rounds": ns.rounds,
        "min_nodes": ns.min_nodes,
        "max_nodes": ns.max_nodes,
        "malicious": ns.malicious,
        "round_timeout_s": ns.timeout,
        "norm_bound": ns.norm_bound,
        "clipping_norm": ns.clipping_norm,
        "secure_aggregation": ns.secure_aggregation,
        "secagg_clip": ns.secagg_clip,
        "dp_noise_multiplier": ns.dp_noise,
        "dp_clip": ns.dp_clip,
        "lr": ns.lr,
        "local_epochs": ns.local_epochs,
        "labels": labels,
        "profile": ns.profile,
        "drifted_only": ns.drifted_only,
        "from_last": ns.from_last,
        "model": ns.model,
        "model_version": ns.model_version,
    }
    out = api.request("POST", "/federated/runs", json=body)
    if ns.json:
        return out
    console.print(f"started federated run [bold]{out['run_id']}[/]")
    return None


def fl_status(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    latest: list[dict[str, Any]] = api.request("GET", "/federated/runs", params={"limit": 1})
    run_id = ns.run_id or (latest[0]["id"] if latest else "")
    if not run_id:
        console.print("no federated runs yet")
        return None
    out = api.request("GET", f"/federated/runs/{run_id}")
    if ns.json:
        return out
    run = out["run"]
    console.print(
        f"run {run['id']} {run['status']} strategy={run['strategy']}"
        f" rounds={len(out['rounds'])}/{run['num_rounds']}"
        f" eps={run['epsilon']:.2f} online={out['online_devices']} {run['detail']}"
    )
    table = Table()
    for c in ("round", "sampled", "results", "failures", "rejected", "dropped", "eps", "secs", "top anomaly"):
        table.add_column(c)
    for r in out["rounds"]:
        top = max(r["anomaly_scores"].items(), key=lambda kv: kv[1], default=("-", 0.0))
        table.add_row(
            str(r["server_round"]), str(r["sampled"]), str(r["results"]), str(r["failures"]),
            _counts(r["rejected"]), _counts(r["dropped"]), f"{r['epsilon']:.2f}", f"{r['duration_s']:.1f}",
            f"{top[0]} ({top[1]:.1f})",
        )  # fmt: skip
    console.print(table)
    return None


def fl_history(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    rows = api.request("GET", "/federated/runs", params={"limit": ns.limit})
    if ns.json:
        return rows
    table = Table(title=f"{len(rows)} federated run(s)")
    for c in ("id", "status", "strategy", "rounds", "eps", "parent", "final", "created"):
        table.add_column(c)
    for r in rows:
        table.add_row(
            r["id"][:12], r["status"], r["strategy"], str(r["num_rounds"]), f"{r['epsilon']:.2f}",
            r["parent_digest"][:10], r["final_digest"][:10] or "-", (r["created_at"] or "")[:19],
        )  # fmt: skip
    console.print(table)
    return None


def fl_cancel(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    """Cancel a running run (the API answers 404 for an unknown run, 409 if it already ended)."""
    out = api.request("POST", f"/federated/runs/{ns.run_id}/cancel", json={"reason": ns.reason})
    if ns.json:
        return out
    console.print(f"run {out['id']} {out['status']}: {out['detail']}", markup=False, highlight=False)
    return None


def _counts(counts: dict[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(counts.items())) or "-"


def register(sub: Any) -> None:
    """Add the `fl` group to the operator CLI's subparsers."""
    fl = sub.add_parser("fl", help="federated learning runs").add_subparsers(dest="command", required=True)
    p = fl.add_parser("start", help="start a federated run on the eligible online devices")
    p.add_argument("--strategy", default="fedavg")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--min-nodes", type=int, default=2)
    p.add_argument("--max-nodes", type=int, default=0, help="at most this many devices per round (0: all)")
    p.add_argument("--malicious", type=int, default=0, help="f for krum/multikrum")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per round")
    p.add_argument("--norm-bound", type=float, default=0.0, help="server-side: bound each update (0: off)")
    p.add_argument(
        "--clipping-norm",
        type=float,
        default=0.0,
        help="device-side L2 clip of each update before upload and masking (0: off); applies under"
        " --secure-aggregation, where the server sees only the sum",
    )
    p.add_argument("--secure-aggregation", action="store_true")
    p.add_argument("--secagg-clip", type=float, default=1.0, help="per-coordinate range of masked values")
    p.add_argument("--dp-noise", type=float, default=0.0, help="client-side DP noise multiplier")
    p.add_argument("--dp-clip", type=float, default=1.0, help="L2 clip before the DP noise")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--label", action="append", default=[], help="key=value cohort filter")
    p.add_argument("--profile", default="")
    p.add_argument("--drifted-only", action="store_true")
    p.add_argument("--from-last", action="store_true", help="continue from the last completed run")
    p.add_argument("--model", default="", help="registry model: start from its head, hand the result back")
    p.add_argument("--model-version", type=int, help="registry version to start from (default: newest)")
    p.set_defaults(func=fl_start)
    p = fl.add_parser("status", help="rounds of one run (default: the latest)")
    p.add_argument("run_id", nargs="?", default="")
    p.set_defaults(func=fl_status)
    p = fl.add_parser(
        "cancel", aliases=["stop"], help="stop a running run now (its round is abandoned) and free the slot"
    )
    p.add_argument("run_id")
    p.add_argument("--reason", default="", help="why (recorded on the run with your token's name)")
    p.set_defaults(func=fl_cancel)
    p = fl.add_parser("history")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=fl_history)
