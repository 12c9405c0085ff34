"""The device port holds one fd per connected device: the server raises its soft open-file limit
to the hard limit when it builds the gRPC servers (grpc_api/server.py raise_fd_limit)."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_soft_open_file_limit_is_raised_to_the_hard_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = 256

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))

    code = (
        "import resource\n"
        "from fleet_server.grpc_api.server import raise_fd_limit\n"
        "before = resource.getrlimit(resource.RLIMIT_NOFILE)[0]\n"
        "print(before, raise_fd_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, preexec_fn=lower, capture_output=True, text=True, check=True
    )
    before, returned, after = (int(x) for x in out.stdout.split())
    assert before == low
    expected = hard if hard != resource.RLIM_INFINITY else after
    assert returned == after == expected and after > low
