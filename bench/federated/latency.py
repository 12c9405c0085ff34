"""Round latency of FleetGrid with N real agent processes (`python -m agent.federated`) on loopback.

The fleet server runs in-process (tests/helpers/inproc: FastAPI lifespan with both live gRPC
ports, real mutual TLS, SQLite); each device is a separate Python process with its own
certificate and a Dirichlet(0.3) share of digits. FedAvg, softmax head 64x10 (650 parameters),
1 local epoch. Reported: median wall time of rounds 2..R as recorded by the runner (round 1
includes connection warm-up), and the final test accuracy.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord
from sqlmodel import Session, select

from agent.identity import IdentityStore
from bench.federated.accuracy import dirichlet, load
from fleet_server.db import make_engine
from fleet_server.federated.models import FlRound
from fleet_server.federated.runner import RunSpec
from fleet_server.federated.strategy import StrategySpec
from tests.helpers.inproc import enroll, live, prepare


def _spawn(tmp: Path, device_id: str, target: str) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "agent.federated",
        "--data-dir",
        str(tmp / device_id),
        "--endpoint",
        target,
        "--samples",
        str(tmp / f"{device_id}.npz"),
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def measure(n: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        settings, tokens = prepare(tmp / "srv", "", device_max_messages_per_s=50, device_burst=100)
        for server in live(settings, tokens):
            xtr, ytr, xte, yte = load()
            procs = []
            for i, part in enumerate(dirichlet(ytr, n, 0.3, np.random.default_rng(0))):
                did = f"bench-{i:03d}"
                creds = enroll(server, did, server.bootstrap_token(), tmp)
                IdentityStore(tmp / did).save(
                    device_id=did, cert_chain_pem=creds.chain_pem, ca_pem=creds.ca_pem, sync_endpoint=""
                )
                np.savez(tmp / f"{did}.npz", x=xtr[part], y=ytr[part])
                procs.append(_spawn(tmp, did, server.device_target))
            rt = server.client.app.state.federated  # type: ignore[attr-defined]
            t0 = time.monotonic()
            while len(list(rt.grid.get_node_ids())) < n:
                time.sleep(0.1)
            attach_s = time.monotonic() - t0
            spec = RunSpec(
                strategy=StrategySpec("fedavg", min_nodes=n),
                num_rounds=rounds,
                round_timeout_s=120,
                train_config={"lr": 0.5, "local-epochs": 1, "batch-size": 16},
            )
            init = ArrayRecord(
                {"w": Array(np.zeros((64, 10), np.float32)), "b": Array(np.zeros(10, np.float32))}
            )
            run_id = rt.runner.run_blocking(spec, init)
            engine = make_engine(settings.resolved_database_url())
            with Session(engine) as s:
                recs = s.exec(
                    select(FlRound).where(FlRound.run_id == run_id).order_by(FlRound.server_round)
                ).all()
                durations = [r.duration_s for r in recs]
            engine.dispose()
            w = rt.runner.result
            acc = float(((xte @ w["w"].numpy() + w["b"].numpy()).argmax(1) == yte).mean()) if w else 0.0
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait(20)
            return {
                "devices": n,
                "attach_s": attach_s,
                "round_s": durations,
                "median_round_s": float(np.median(durations[1:] or durations)),
                "accuracy": acc,
            }
    raise RuntimeError("server did not start")
