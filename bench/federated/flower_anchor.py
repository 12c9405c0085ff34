"""Anchor: the same FedAvg rounds on Flower 1.42's deployment engine (SuperLink + N SuperNodes).

Insecure loopback (no TLS: this favours Flower), `flower-superlink` and one `flower-supernode`
process per device, the app in `bench/federated/flower_app` (same numpy trainer, same Dirichlet
shards, 650 parameters). The venv lacks the `flwr`, `flwr-serverapp` and `flwr-clientapp` console
scripts, so tiny wrappers are put on PATH. Per-round time = difference between consecutive
round-start stamps written by the ServerApp.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
APP = Path(__file__).resolve().parent / "flower_app"
WRAPPERS = {
    "flwr": "from flwr.cli.app import app; app()",
    "flwr-serverapp": "from flwr.superlink.cli import flwr_serverapp; flwr_serverapp()",
    "flwr-clientapp": "from flwr.supernode.cli import flwr_clientapp; flwr_clientapp()",
    "flower-superexec": "from flwr.supercore.cli import flower_superexec; flower_superexec()",
}


def _bin_dir(tmp: Path) -> Path:
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for name, code in WRAPPERS.items():
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\nimport sys\n{code}\n")
        path.chmod(0o755)
    return bin_dir


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _clientapps() -> int:
    count = 0
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            count += b"flwr-clientapp" in cmdline.read_bytes()
        except OSError:
            pass
    return count


def measure(
    n: int, rounds: int, timeout_s: float = 1500, stagger_s: float = 1.0, min_free_mb: float = 4000
) -> dict[str, Any]:
    """SuperNodes start `stagger_s` apart; one that exits before round 1 has started (on a loaded
    2-core box a SuperNode can give up connecting, exit code 305) is restarted with a fresh key.
    The run is aborted (and says so) if available memory falls below `min_free_mb`: the box is shared."""
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        env = dict(os.environ)
        env["PATH"] = f"{_bin_dir(tmp)}:{Path(sys.executable).parent}:{env['PATH']}"
        env["PYTHONPATH"] = str(ROOT)
        env["FLWR_HOME"] = str(tmp / "flwr_home")
        (tmp / "flwr_home").mkdir()
        config = '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:8000"\n'
        (tmp / "flwr_home" / "config.toml").write_text(config + "insecure = true\n")
        stamps = tmp / "stamps.txt"
        log = open(tmp / "flower.log", "ab")

        def supernode(i: int) -> subprocess.Popen[bytes]:
            cmd = ["flower-supernode", "--insecure", "--superlink", "127.0.0.1:8000", "--port", str(9200 + i),
                   "--node-config", f"partition-id={i} num-partitions={n}"]  # fmt: skip
            return subprocess.Popen(cmd, env=env, stdout=log, stderr=log)

        superlink = ["flower-superlink", "--insecure", "--disable-runtime-dependency-installation"]
        link = subprocess.Popen(superlink, env=env, stdout=log, stderr=log)
        time.sleep(5)
        nodes: dict[int, subprocess.Popen[bytes]] = {}
        for i in range(n):
            nodes[i] = supernode(i)
            time.sleep(stagger_s)
        run = ["flwr", "run", str(APP), "local", "--stream", "--run-config",
               f"num-server-rounds={rounds} num-nodes={n} stamps='{stamps}'"]  # fmt: skip
        t0, restarts, min_mb, aborted = time.time(), 0, _available_mb(), ""
        client = subprocess.Popen(run, env=env, stdout=log, stderr=log)
        try:
            # `flwr run --stream` may return before the ServerApp is done: wait for the end stamp
            while time.time() - t0 < timeout_s and "end" not in _read(stamps):
                if not _read(stamps):
                    for i, p in nodes.items():
                        if p.poll() is not None:
                            nodes[i], restarts = supernode(i), restarts + 1
                min_mb = min(min_mb, _available_mb())
                if min_mb < min_free_mb:
                    aborted = f"MemAvailable {min_mb:.0f} MB with {_clientapps()} flwr-clientapp processes"
                    break
                time.sleep(1)
        finally:
            for p in [client, *nodes.values(), link]:
                p.send_signal(signal.SIGTERM)
            for p in [client, *nodes.values(), link]:
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
            log.close()
        text = _read(stamps)
        marks = [float(line.split()[1]) for line in text.splitlines()]
        durations = list(np.diff(marks)) if len(marks) > 1 else []
        result: dict[str, Any] = {
            "devices": n,
            "round_s": durations,
            "total_s": time.time() - t0,
            "supernode_restarts": restarts,
            "min_available_mb": min_mb,
            "finished": "end" in text,
            "aborted": aborted,
        }
        if durations:
            result["median_round_s"] = float(np.median(durations[1:] or durations))
        else:
            result["error"] = (tmp / "flower.log").read_text()[-3000:]
        return result
