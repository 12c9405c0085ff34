"""On-device trainer speed: one local epoch of the digits head, numpy trainer vs torch trainer (CPU).

The work a device does per federated round: fine-tune the 64x10 softmax head on 1,000 digits
samples (lr 0.5). Each cell is the median wall time of `--repeats` single-epoch calls after one
warm-up call, for batch sizes 32 and 256; torch runs with 1 thread and with torch's default. Also
prints the test accuracy both trainers reach after 5 epochs from zero weights (same seed).

Reproduce (repo root):
    .venv/bin/python -m bench.federated.trainer_speed [--repeats 9] [--out trainer_speed.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agent.federated import train_torch, trainer
from tests.fixtures.heads import flat_digits

Train = Callable[[list[np.ndarray], np.ndarray, np.ndarray, trainer.TrainParams], Any]


def _zeros() -> list[np.ndarray]:
    return [np.zeros((64, 10), np.float32), np.zeros(10, np.float32)]


def _median_s(fn: Train, x: np.ndarray, y: np.ndarray, batch: int, repeats: int) -> float:
    params = trainer.TrainParams(lr=0.5, epochs=1, batch_size=batch)
    fn(_zeros(), x, y, params)  # warm-up (torch: first-call dispatch, allocator)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(_zeros(), x, y, params)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--out", type=Path)
    ns = ap.parse_args()
    x_tr, y_tr, x_te, y_te = flat_digits(0)
    x, y = x_tr[:1000], y_tr[:1000]
    default_threads = torch.get_num_threads()
    trainers: dict[str, Train] = {
        "numpy": trainer.train,
        "torch, 1 thread": lambda w, x, y, p: train_torch.train(w, x, y, p, threads=1),
        f"torch, {default_threads} threads": lambda w, x, y, p: train_torch.train(
            w, x, y, p, threads=default_threads
        ),
    }
    out: dict[str, Any] = {"load_avg_1m_before": os.getloadavg()[0], "samples": len(y), "rows": []}
    for batch in (32, 256):
        for name, fn in trainers.items():
            seconds = _median_s(fn, x, y, batch, ns.repeats)
            out["rows"].append({"trainer": name, "batch": batch, "epoch_s": seconds})
            print(f"batch {batch:>3} {name:<18} {seconds * 1e3:8.2f} ms/epoch", flush=True)
    params = trainer.TrainParams(lr=0.5, epochs=5, seed=0)
    for name, fn in (("numpy", trainer.train), ("torch", trainers["torch, 1 thread"])):
        weights, _ = fn(_zeros(), x, y, params)
        out[f"{name}_test_acc_5_epochs"] = trainer.evaluate(weights, x_te, y_te)[1]
    out["load_avg_1m_after"] = os.getloadavg()[0]
    print(json.dumps(out, indent=2))
    if ns.out:
        ns.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
