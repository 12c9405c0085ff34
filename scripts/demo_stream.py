"""The demo's sensor stream: an application on each device feeding batches to its agent's socket.

Every device gets one thread that sends small batches of digits through `EdgeloopClient` (the
inference socket, as an app on the device would), in one of three modes the demo switches live:
`normal` (the camera as it was mounted), `rotated` (the camera of a whole site turned by 90°:
covariate drift the deployed model was never trained on) and `stuck` (one frame, repeated: a frozen
sensor). `accuracy()` measures a served model on held-out labelled inputs through the same socket.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent.client import EdgeloopClient

MODES = ("normal", "rotated", "stuck")


def rotate(x: np.ndarray) -> np.ndarray:
    """Flat 8x8 digits turned by 90° (a camera mounted sideways)."""
    return np.rot90(x.reshape(-1, 8, 8), k=1, axes=(1, 2)).reshape(x.shape).astype(np.float32)


@dataclass
class Feed:
    """One device's app: its socket, its inputs and the current mode."""

    device_id: str
    sock: Path
    pool: np.ndarray  # normal inputs, shaped for the device's model
    shape: Callable[[np.ndarray], np.ndarray] = lambda x: x
    mode: str = "normal"
    batch: int = 8
    served: Counter[str] = field(default_factory=Counter)

    def next_batch(self, rng: np.random.Generator) -> np.ndarray:
        if self.mode == "stuck":
            return np.repeat(self.pool[:1], self.batch, axis=0)
        x = self.pool[rng.integers(0, len(self.pool), self.batch)]
        return self.shape(rotate(x)) if self.mode == "rotated" else self.shape(x)


class Stream:
    """Threads feeding every device; `set_mode` switches a device's sensor live."""

    def __init__(self, feeds: list[Feed], period_s: float = 0.1) -> None:
        self.feeds = {f.device_id: f for f in feeds}
        self._period = period_s
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for i, feed in enumerate(self.feeds.values()):
            t = threading.Thread(target=self._run, args=(feed, i), name=f"app-{feed.device_id}", daemon=True)
            t.start()
            self._threads.append(t)

    def set_mode(self, device_id: str, mode: str) -> None:
        assert mode in MODES, mode
        self.feeds[device_id].mode = mode

    def rows(self) -> dict[str, int]:
        return {d: f.served["rows"] for d, f in self.feeds.items()}

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)

    def _run(self, feed: Feed, seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not self._stop.is_set():
            try:
                with EdgeloopClient(feed.sock, timeout_s=5) as client:
                    while not self._stop.is_set():
                        client.predict(feed.next_batch(rng))
                        feed.served["rows"] += feed.batch
                        self._stop.wait(self._period)
            except Exception:  # no model yet, or the agent is switching models: retry
                feed.served["errors"] += 1
                self._stop.wait(0.5)


def accuracy(sock: Path, x: np.ndarray, y: np.ndarray) -> tuple[float, str]:
    """Top-1 accuracy of the model the agent serves on labelled inputs, and which version answered."""
    correct, version = 0, ""
    with EdgeloopClient(sock, timeout_s=30) as client:
        for i in range(0, len(x), 200):
            got = client.predict_full(x[i : i + 200])
            out = got.outputs.get("probabilities", next(iter(got.outputs.values())))
            correct += int((np.asarray(out).reshape(len(out), -1).argmax(1) == y[i : i + 200]).sum())
            version = f"{got.model_name}@{got.model_version}"
    return correct / len(x), version


def served_version(sock: Path) -> str:
    """`name@version` the agent serves, or '' when it serves nothing (yet)."""
    try:
        with EdgeloopClient(sock, timeout_s=5) as client:
            info = client.model_info()
            return f"{info.name}@{info.version}" if info.name else ""
    except Exception:
        return ""


def wait_version(sock: Path, want: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if served_version(sock) == want:
            return True
        time.sleep(0.3)
    return False
