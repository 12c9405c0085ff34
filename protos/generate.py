"""Regenerate the committed protobuf/gRPC code from protos/edgeloop/v1/*.proto.

Usage: python protos/generate.py [--check]

--check regenerates into a temporary directory and exits 1 when the committed files
differ (CI and tests/contract/test_protos_generated.py use it).
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos" / "edgeloop" / "v1"


def generate(out_root: Path) -> list[Path]:
    from grpc_tools import protoc

    protos = sorted(PROTO_DIR.glob("*.proto"))
    args = [
        "protoc",
        f"-I{ROOT}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *[str(p.relative_to(ROOT)) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return [p for p in (out_root / "protos" / "edgeloop" / "v1").iterdir() if p.suffix in {".py", ".pyi"}]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    ns = parser.parse_args()
    if not ns.check:
        generate(ROOT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = [f.name for f in fresh if not filecmp.cmp(f, PROTO_DIR / f.name, shallow=False)]
        committed = {p.name for p in PROTO_DIR.glob("*_pb2*.py*")}
        extra = sorted(committed - {f.name for f in fresh})
    if stale or extra:
        print(f"generated code is stale: {stale + extra}; run python protos/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
