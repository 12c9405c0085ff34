"""`edgeloop release publish|list|deploy|status` and `edgeloop keys generate|rotate-root`.

Operator CLI handlers over the OTA REST API (same conventions as operator_cli.py: rich output for
people, the API's JSON unchanged with --json). Root rotation runs here, on the operator's machine:
the root keys never reach the server, which only verifies and stores the new root.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import httpx
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table
from securesystemslib.signer import CryptoSigner  # type: ignore[attr-defined]

from fleet_server.cliapi import CliError, CliExit, UsageError, error_from, tls_verify
from fleet_server.ota.keys import write_private_key
from fleet_server.ota.root_rotation import rotate_root

# Deployment states whose reason the operator must read in full (the agent's terminal problems).
PROBLEM_STATES = frozenset({"failed", "refused", "rolled_back"})


class Api(Protocol):
    def request(self, method: str, path: str, **kwargs: Any) -> Any: ...


def _kv(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"edgeloop: expected key=value, got {item!r}")
        out[key] = value
    return out


_CHUNK = 1 << 20
PUBLISH_ATTEMPTS = 4  # POST /releases again (same Idempotency-Key) when the answer is overdue


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _upload(api: Api, path: Path, progress: Progress) -> str:
    """Stream `path` to the blob store in 1 MiB chunks (the idle timeout applies per chunk) and
    check the server stored exactly these bytes; returns the sha256."""
    size, expected = path.stat().st_size, _sha256(path)
    task = progress.add_task(f"upload {path.name}", total=size)

    def blocks() -> Iterator[bytes]:
        with path.open("rb") as fh:
            while block := fh.read(_CHUNK):
                yield block
                progress.advance(task, len(block))

    stored = api.request("PUT", "/ota/blobs", content=blocks(), headers={"Content-Length": str(size)})
    if stored["sha256"] != expected or stored["length"] != size:
        raise CliError(f"upload of {path} was altered in transit (server stored {stored})", CliExit.CONFLICT)
    return expected


def _progress(ns: argparse.Namespace) -> Progress:
    """Upload progress on stderr, only for a person at a terminal (never with --json)."""
    err = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    return Progress(*columns, console=err, disable=ns.json or not err.is_terminal)


def publish_key(body: dict[str, Any]) -> str:
    """The default Idempotency-Key: the request's content (name, version, every blob's sha256, gates...),
    so running the same publish again returns the release it made instead of a duplicate."""
    return "pub-" + hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:48]


def _post_release(api: Api, body: dict[str, Any], key: str, size: int) -> Any:
    # Signing compresses, chunks and diffs the artifact before the server answers: the wait for
    # that answer grows with the artifact; an overdue answer is asked for again with the same key.
    wait = httpx.Timeout(connect=10.0, read=60.0 + 3.0 * size / _CHUNK, write=30.0, pool=10.0)
    for attempt in range(1, PUBLISH_ATTEMPTS + 1):
        try:
            return api.request("POST", "/releases", json=body, headers={"Idempotency-Key": key}, timeout=wait)
        except TimeoutError:
            if attempt == PUBLISH_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def release_publish(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    artifact = Path(ns.artifact)
    with _progress(ns) as progress:
        body: dict[str, Any] = {
            "model_name": ns.name,
            "model_version": ns.model_version,
            "artifact_sha256": _upload(api, artifact, progress),
            "filename": ns.filename or ("model" + artifact.suffix),
            "profiles": ns.profile or [],
            "runtime": _kv(ns.runtime),
            "gates": {k: float(v) for k, v in _kv(ns.gate).items()},
        }
        if ns.golden:
            body["golden_sha256"] = _upload(api, Path(ns.golden), progress)
            body["golden_threshold"] = ns.golden_threshold
        if ns.drift_reference:
            body["drift_reference_sha256"] = _upload(api, Path(ns.drift_reference), progress)
        if ns.warmup:
            body["warmup_sha256"] = _upload(api, Path(ns.warmup), progress)
    if ns.report:
        body["compiler_report_sha256"] = hashlib.sha256(Path(ns.report).read_bytes()).hexdigest()
    release = _post_release(api, body, ns.idempotency_key or publish_key(body), artifact.stat().st_size)
    if ns.deploy:
        release["deployment"] = api.request(
            "POST", f"/releases/{release['seq']}/deployments", json={"device_ids": ns.deploy}
        )
    if ns.json:
        return release
    name = f"{release['model_name']}@{release['model_version']}"
    console.print(f"release {release['seq']}: {name} sha256 {release['sha256'][:16]}")
    if ns.deploy:
        console.print(f"deployment {release['deployment']['deployment_id']} to {len(ns.deploy)} device(s)")
    return None


def release_list(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    rows = api.request("GET", "/releases")
    if ns.json:
        return rows
    table = Table(title=f"{len(rows)} release(s)")
    for col in ("seq", "model", "version", "sha256", "bytes", "golden", "by", "created"):
        table.add_column(col)
    for r in rows:
        golden = r["custom"].get("edgeloop", {}).get("golden") or {}
        table.add_row(
            str(r["seq"]), r["model_name"], r["model_version"], r["sha256"][:12], str(r["length"]),
            str(golden.get("threshold", "-")), r["created_by"], str(r["created_at"]),
        )  # fmt: skip
    console.print(table)
    return None


def release_deploy(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    out = api.request("POST", f"/releases/{ns.seq}/deployments", json={"device_ids": ns.devices})
    if ns.json:
        return out
    console.print(f"deployment {out['deployment_id']}: release {ns.seq} to {out['devices']} device(s)")
    return None


def release_status(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    rows = api.request("GET", f"/deployments/{ns.deployment_id}")
    if ns.json:
        return rows
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    table = Table(
        title=f"deployment {ns.deployment_id}: {len(rows)} device(s){': ' + summary if summary else ''}"
    )
    for col in ("device", "state", "event", "reason / detail", "updated"):
        table.add_column(col, overflow="fold")
    for r in rows:
        problem = r["state"] in PROBLEM_STATES or r["event"] == "retry"
        state = f"[bold red]{r['state']}[/]" if problem else r["state"]
        # a refusal or failure shows its whole reason; progress notes are cut
        detail = r["detail"] if problem else r["detail"][:80]
        table.add_row(r["device_id"], state, r["event"], escape(detail), str(r["updated_at"]))
    console.print(table)
    return None


def _signer(path: str) -> CryptoSigner:
    return CryptoSigner(load_pem_private_key(Path(path).read_bytes(), password=None))


def keys_generate(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    signer = CryptoSigner.generate_ed25519()
    write_private_key(Path(ns.out), signer)
    if ns.json:
        return {"path": ns.out, "keyid": signer.public_key.keyid}
    console.print(f"wrote {ns.out} (keyid {signer.public_key.keyid})")
    return None


def keys_rotate_root(api: Api, ns: argparse.Namespace, console: Console) -> Any:
    url = ns.server.rstrip("/") + "/ota/metadata/root.json"
    try:
        resp = httpx.get(url, timeout=15, verify=tls_verify(getattr(ns, "ca_file", None)))
    except httpx.TransportError as err:
        raise ConnectionError(f"cannot reach fleet server at {url}: {err}") from err
    if resp.status_code >= 400:
        raise error_from(resp)
    current = resp.content
    new_signers = [_signer(p) for p in ns.new_key]
    data = rotate_root(
        current,
        old_signers=[_signer(p) for p in ns.old_key],
        new_keys=[s.public_key for s in new_signers],
        threshold=ns.threshold,
        new_signers=new_signers,
        expires=datetime.now(UTC) + timedelta(days=ns.expires_days),
    )
    out = api.request("POST", "/ota/root", content=data)
    if ns.json:
        return out
    console.print(f"root version {out['version']}: {len(new_signers)} key(s), threshold {ns.threshold}")
    return None


def register(sub: Any) -> None:
    """Add the ``release`` and ``keys`` groups to the operator CLI's subparsers."""
    release = sub.add_parser("release", help="signed OTA model releases").add_subparsers(
        dest="command", required=True
    )
    p = release.add_parser("publish", help="upload and sign a model release")
    p.add_argument("artifact")
    p.add_argument("--name", required=True)
    p.add_argument("--version", dest="model_version", required=True)
    p.add_argument("--filename", help="target file name (default model.<suffix>)")
    p.add_argument("--golden", help="labelled golden set (.npz with input:<name> arrays and labels)")
    p.add_argument("--golden-threshold", type=float, default=0.0)
    p.add_argument(
        "--warmup", help="warm-up sample the device loads the model with (.npz, one array per input name)"
    )
    p.add_argument(
        "--drift-reference", help="drift_reference.json the compiler wrote beside the artifact (signed too)"
    )
    p.add_argument("--profile", action="append", help="compatible device profile (repeat)")
    p.add_argument("--runtime", action="append", help="runtime requirement key=value (repeat)")
    p.add_argument("--report", help="compiler report file (its sha256 is signed into the release)")
    p.add_argument("--gate", action="append", help="gate threshold key=value, e.g. min_agreement=0.95")
    p.add_argument("--deploy", nargs="+", metavar="DEVICE", help="also deploy to these devices")
    p.add_argument(
        "--idempotency-key",
        help="publish key (default: derived from the content, so a re-run returns the same release; "
        "pass a new value to publish the same bytes again as a new release)",
    )
    p.set_defaults(func=release_publish)
    release.add_parser("list").set_defaults(func=release_list)
    p = release.add_parser("deploy", help="assign a release to devices")
    p.add_argument("seq", type=int)
    p.add_argument("devices", nargs="+")
    p.set_defaults(func=release_deploy)
    p = release.add_parser("status", help="per-device status of a deployment")
    p.add_argument("deployment_id")
    p.set_defaults(func=release_status)

    keys = sub.add_parser("keys", help="OTA signing keys").add_subparsers(dest="command", required=True)
    p = keys.add_parser("generate", help="new ed25519 key file (for root rotation)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=keys_generate)
    p = keys.add_parser("rotate-root", help="sign root N+1 offline (old and new keys) and upload it")
    p.add_argument(
        "--old-key", action="append", required=True, help="current root key PEM (repeat to threshold)"
    )
    p.add_argument("--new-key", action="append", required=True, help="new root key PEM (repeat)")
    p.add_argument("--threshold", type=int, required=True)
    p.add_argument("--expires-days", type=int, default=365)
    p.set_defaults(func=keys_rotate_root)
