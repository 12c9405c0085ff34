"""`edgeloop models register|list|show|policy|approve`: operator CLI over the registry REST API.

Same conventions as operator_cli.py: rich tables for people, the API's JSON unchanged with --json.
Files (model, data sets) are uploaded as blobs first, then referenced by sha256.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console
from rich.table import Table


class Api(Protocol):
    def request(self, method: str, path: str, **kwargs: Any) -> Any: ...


def _upload(api: Api, path: str | None) -> str:
    if not path:
        return ""
    return str(api.request("PUT", "/ota/blobs", content=Path(path).read_bytes())["sha256"])


def models_register(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    budgets = {"max_accuracy_drop": ns.max_accuracy_drop} if ns.max_accuracy_drop is not None else {}
    body: dict[str, Any] = {
        "name": ns.name,
        "artifact_sha256": _upload(api, ns.model),
        "parent_version": ns.parent,
        "profiles": ns.profile,
        "budgets": budgets,
        "calib_sha256": _upload(api, ns.calib),
        "eval_sha256": _upload(api, ns.eval),
        "golden_sha256": _upload(api, ns.golden),
        "golden_threshold": ns.golden_threshold,
        "warmup_sha256": _upload(api, ns.warmup),
    }
    if ns.batched_inputs is not None:  # "" = no input is batched (a stateful model)
        body["batched_inputs"] = [n.strip() for n in ns.batched_inputs.split(",") if n.strip()]
    if ns.micro_batch is not None:
        body["micro_batch"] = ns.micro_batch
    if ns.drift_budget is not None:
        body["drift_budget_per_10k"] = ns.drift_budget
    out = api.request("POST", "/models", json=body)
    if ns.json:
        return out
    console.print(
        f"registered [bold]{out['name']}@{out['version']}[/] ({out['status']}); compiling for {ns.profile}"
    )
    return None


def models_list(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    rows = api.request("GET", "/models", params={"name": ns.name} if ns.name else {})
    if ns.json:
        return rows
    table = Table(title=f"{len(rows)} model version(s)")
    for c in ("model", "parent", "source", "status", "accuracy (fp32)", "artifacts", "released to", "detail"):
        table.add_column(c)
    for r in rows:
        arts = ", ".join(f"{p} {_pct(a.get('accuracy'))}" for p, a in sorted(r["artifacts"].items())) or "-"
        released = sum(len(x["devices"]) for x in r["releases"].values())
        table.add_row(
            f"{r['name']}@{r['version']}", str(r["parent_version"] or "-"), r["source"], r["status"],
            _pct(r["accuracy"]), arts, str(released or "-"), r["detail"][:60],
        )  # fmt: skip
    console.print(table)
    return None


def models_show(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    out = api.request("GET", f"/models/{ns.name}/versions/{ns.version}")
    if ns.json:
        return out
    head = f"[bold]{out['name']}@{out['version']}[/] {out['status']}"
    console.print(f"{head} source={out['source']} parent={out['parent_version']}")
    lin = out["lineage"]
    if lin.get("run_id"):
        rounds = lin.get("rounds", [])
        console.print(
            f"  federated run {lin['run_id'][:12]} strategy={lin.get('strategy')} rounds={len(rounds)}"
            f" participants(max)={lin.get('participants_max')} eps={lin.get('epsilon', 0):.2f}"
            f" delta={lin.get('delta', 0):g} secure_aggregation={lin.get('secure_aggregation')}"
        )
    for profile, art in sorted(out["artifacts"].items()):
        size = f"{art['size_bytes']:,} B"
        console.print(
            f"  {profile}: {art['recipe']} {art['filename']} {size} accuracy {_pct(art['accuracy'])}"
        )
    for profile, rel in sorted(out["releases"].items()):
        console.print(f"  release {rel['release_seq']} ({profile}) -> {', '.join(rel['devices'])}")
    if out["detail"]:
        console.print(f"  {out['detail']}")
    return None


def models_policy(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    out = api.request("PUT", f"/models/{ns.name}/policy", json={"auto_release": ns.auto_release == "on"})
    if ns.json:
        return out
    console.print(f"{out['name']}: auto-release {'on' if out['auto_release'] else 'off'}")
    return None


def models_approve(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    body = {"devices": ns.device} if ns.device else {}
    out = api.request("POST", f"/models/{ns.name}/versions/{ns.version}/approve", json=body)
    if ns.json:
        return out
    for profile, rel in sorted(out["releases"].items()):
        console.print(f"release {rel['release_seq']} ({profile}) deployed to {', '.join(rel['devices'])}")
    return None


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def register(sub: Any) -> None:
    """Add the `models` group to the operator CLI's subparsers."""
    models = sub.add_parser("models", help="model registry").add_subparsers(dest="command", required=True)
    p = models.add_parser("register", help="upload an fp32 ONNX classifier as the next version")
    p.add_argument("model")
    p.add_argument("--name", required=True)
    p.add_argument("--parent", type=int, help="parent version (default: the newest; budgets are inherited)")
    p.add_argument("--profile", action="append", default=[], help="device profile to compile for (repeat)")
    p.add_argument("--calib", help="calibration inputs (.npz)")
    p.add_argument("--eval", help="labelled evaluation set (.npz with x, y)")
    p.add_argument("--golden", help="golden set for the on-device gate (.npz with input:<name>, labels)")
    p.add_argument("--golden-threshold", type=float, default=0.0)
    p.add_argument(
        "--warmup", help="warm-up sample devices load the model with (.npz, one array per input name)"
    )
    p.add_argument("--max-accuracy-drop", type=float, help="compiler budget, inherited by descendants")
    p.add_argument(
        "--batched-inputs",
        metavar="NAMES",
        help="comma-separated inputs whose first axis is the batch ('' = none: a stateful model); "
        "default: read from the model",
    )
    p.add_argument(
        "--micro-batch",
        type=int,
        metavar="N",
        help="judge quality at batch N too (devices micro-batch up to N); default: each profile's own, "
        "1 = batch 1 only",
    )
    p.add_argument(
        "--drift-budget",
        type=float,
        metavar="PER_10K",
        help="false-alarm budget of the drift reference shipped with each artifact (false drift "
        "episodes per 10,000 samples; default 0.5), inherited by descendants",
    )
    p.set_defaults(func=models_register)
    p = models.add_parser("list")
    p.add_argument("--name")
    p.set_defaults(func=models_list)
    p = models.add_parser("show")
    p.add_argument("name")
    p.add_argument("version", type=int)
    p.set_defaults(func=models_show)
    p = models.add_parser("policy", help="auto-release federated versions that pass their budgets")
    p.add_argument("name")
    p.add_argument("--auto-release", choices=["on", "off"], required=True)
    p.set_defaults(func=models_policy)
    p = models.add_parser("approve", help="release a compiled version (default: to its cohort)")
    p.add_argument("name")
    p.add_argument("version", type=int)
    p.add_argument("--device", action="append", help="release to these devices instead (repeat)")
    p.set_defaults(func=models_approve)
