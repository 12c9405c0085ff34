"""The fleet server caps BLAS threads (settings.blas_threads): OpenBLAS otherwise wakes every
thread for small products such as a robust round's cosine matrix (1.7x the CPU per robust round
in BENCHMARKS.md's A/B). Each case runs in a fresh interpreter: the cap is process-wide."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PROBE = """
import json, sys
import numpy
from threadpoolctl import threadpool_info
from fleet_server.main import limit_blas_threads
from fleet_server.settings import Settings
before = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
limit_blas_threads(Settings().blas_threads)
after = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
print(json.dumps({"before": before, "after": after}))
"""


def _probe(env_threads: str | None) -> dict[str, list[int]]:
    env = {"PATH": "/usr/bin:/bin", "OPENBLAS_NUM_THREADS": "2"}  # the library default on 2 cores
    if env_threads is not None:
        env["EDGELOOP_BLAS_THREADS"] = env_threads
    cmd = [sys.executable, "-c", PROBE]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=120)
    result: dict[str, list[int]] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize(("setting", "expected"), [(None, 1), ("3", 3), ("0", 2)])
def test_the_server_caps_blas_threads_at_its_setting(setting: str | None, expected: int) -> None:
    threads = _probe(setting)
    assert threads["before"] and all(n == 2 for n in threads["before"]), threads
    assert all(n == expected for n in threads["after"]), threads
