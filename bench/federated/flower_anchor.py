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


def measure(n: int, rounds: int, timeout_s: float = 900) -> dict[str, Any]:
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
        superlink = ["flower-superlink", "--insecure", "--disable-runtime-dependency-installation"]
        procs = [subprocess.Popen(superlink, env=env, stdout=log, stderr=log)]
        time.sleep(5)
        for i in range(n):
            cmd = ["flower-supernode", "--insecure", "--superlink", "127.0.0.1:8000", "--port", str(9200 + i),
                   "--node-config", f"partition-id={i} num-partitions={n}"]  # fmt: skip
            procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=log))
        time.sleep(5)
        run = ["flwr", "run", str(APP), "local", "--stream", "--run-config",
               f"num-server-rounds={rounds} num-nodes={n} stamps='{stamps}'"]  # fmt: skip
        t0 = time.time()
        try:
            out = subprocess.run(run, env=env, capture_output=True, text=True, timeout=timeout_s)
            while time.time() - t0 < timeout_s and "end" not in _read(stamps):
                time.sleep(1)  # `flwr run --stream` may return before the ServerApp is done
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
            log.close()
        text = stamps.read_text() if stamps.exists() else ""
        marks = [float(line.split()[1]) for line in text.splitlines()]
        durations = list(np.diff(marks)) if len(marks) > 1 else []
        result = {"devices": n, "round_s": durations, "total_s": time.time() - t0, "rc": out.returncode}
        if durations:
            result["median_round_s"] = float(np.median(durations[1:] or durations))
        else:
            result["error"] = (
                out.stdout[-1500:] + out.stderr[-1500:] + (tmp / "flower.log").read_text()[-3000:]
            )
        return result
