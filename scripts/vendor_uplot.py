"""Refresh the console's vendored uPlot from the npm registry (pinned version, checked integrity).

Downloads https://registry.npmjs.org/uplot/-/uplot-<VERSION>.tgz, checks it against the sha512
`dist.integrity` the registry's metadata gives for that version, extracts dist/uPlot.iife.min.js,
dist/uPlot.min.css and LICENSE into fleet_server/console/static/vendor/, and writes a VERSION file
with the version and the sha256 of each extracted file. Run by hand when bumping `VERSION`
(`python scripts/vendor_uplot.py [--version X.Y.Z]`); the page itself never needs Node or network.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import sys
import tarfile
import urllib.request
from pathlib import Path

VERSION = "1.6.32"
REGISTRY = "https://registry.npmjs.org/uplot"
FILES = {  # path in the tarball -> name in vendor/
    "package/dist/uPlot.iife.min.js": "uPlot.iife.min.js",
    "package/dist/uPlot.min.css": "uPlot.min.css",
    "package/LICENSE": "LICENSE",
}
DEST = Path(__file__).resolve().parent.parent / "fleet_server" / "console" / "static" / "vendor"
MAX_BYTES = 20 * 1024 * 1024


def _get(url: str) -> bytes:
    req = urllib.request.Request(url, headers={"Accept": "application/json, application/octet-stream"})
    with urllib.request.urlopen(req, timeout=60) as resp:  # a fixed https URL
        body: bytes = resp.read(MAX_BYTES + 1)
    if len(body) > MAX_BYTES:
        raise SystemExit(f"{url}: larger than {MAX_BYTES} bytes")
    return body


def integrity_of(version: str) -> tuple[str, str]:
    """(tarball URL, expected sha512 digest bytes as base64) from the registry's version metadata."""
    meta = json.loads(_get(f"{REGISTRY}/{version}"))
    dist = meta["dist"]
    algo, _, b64 = str(dist["integrity"]).partition("-")
    if algo != "sha512":
        raise SystemExit(f"unexpected integrity algorithm {algo!r}")
    return str(dist["tarball"]), b64


def extract(tgz: bytes) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        for member in tar.getmembers():
            if member.name in FILES and member.isfile():
                handle = tar.extractfile(member)
                assert handle is not None
                out[FILES[member.name]] = handle.read()
    missing = sorted(set(FILES.values()) - set(out))
    if missing:
        raise SystemExit(f"tarball lacks {missing}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default=VERSION, help=f"uPlot version (default {VERSION})")
    parser.add_argument("--dest", type=Path, default=DEST)
    args = parser.parse_args(argv)
    tarball, expected = integrity_of(args.version)
    want = f"{REGISTRY}/-/uplot-{args.version}.tgz"
    if tarball != want:
        raise SystemExit(f"registry names tarball {tarball}, expected {want}")
    tgz = _get(want)
    got = base64.b64encode(hashlib.sha512(tgz).digest()).decode()
    if got != expected:
        raise SystemExit(f"sha512 mismatch for {want}: registry says {expected}, got {got}")
    files = extract(tgz)
    args.dest.mkdir(parents=True, exist_ok=True)
    lines = [f"uplot {args.version}", f"source {want}", f"integrity sha512-{expected}"]
    for name in sorted(files):
        (args.dest / name).write_bytes(files[name])
        lines.append(f"sha256 {hashlib.sha256(files[name]).hexdigest()} {name}")
    (args.dest / "VERSION").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
