"""Real federated devices for tests: `python -m agent.federated` processes on loopback, each
enrolled with its own certificate and holding a Dirichlet(0.3) share of the digits training set."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from agent.identity import IdentityStore
from tests.fixtures.digits import load_digits_data
from tests.helpers.inproc import LiveServer, enroll


def dirichlet_split(y: np.ndarray, clients: int, alpha: float, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(clients)]
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        cuts = (np.cumsum(rng.dirichlet([alpha] * clients)) * len(idx)).astype(int)[:-1]
        for part, chunk in zip(parts, np.split(idx, cuts), strict=True):
            part.extend(chunk.tolist())
    return [np.array(p, dtype=np.int64) for p in parts]


class Fleet:
    def __init__(
        self, server: LiveServer, tmp: Path, n: int, slow_s: float = 0.0, labels: dict[str, str] | None = None
    ) -> None:
        self.server, self.procs, self.ids = server, [], []
        data = load_digits_data(0)
        x = data.x_train.reshape(len(data.x_train), -1)
        self.x_test, self.y_test = data.x_test.reshape(len(data.x_test), -1), data.y_test
        token = server.bootstrap_token(labels=labels)
        for i, part in enumerate(dirichlet_split(data.y_train, n, 0.3, seed=1)):
            device_id = f"fl-{i:02d}"
            creds = enroll(server, device_id, token if i == 0 else server.bootstrap_token(labels=labels), tmp)
            IdentityStore(tmp / device_id).save(
                device_id=device_id, cert_chain_pem=creds.chain_pem, ca_pem=creds.ca_pem, sync_endpoint=""
            )
            rows = part if len(part) else np.arange(5)
            np.savez(tmp / f"{device_id}.npz", x=x[rows], y=data.y_train[rows])
            self.ids.append(device_id)
            self.procs.append(self._spawn(tmp, device_id, slow_s))

    def _spawn(self, tmp: Path, device_id: str, slow_s: float) -> subprocess.Popen[bytes]:
        log = open(tmp / f"{device_id}.log", "ab")
        cmd = [
            sys.executable,
            "-m",
            "agent.federated",
            "--data-dir",
            str(tmp / device_id),
            "--endpoint",
            self.server.device_target,
            "--samples",
            str(tmp / f"{device_id}.npz"),
            "--slow-s",
            str(slow_s),
        ]
        return subprocess.Popen(cmd, stdout=log, stderr=log)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
