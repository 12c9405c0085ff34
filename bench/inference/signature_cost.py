"""Issue 17 (models): cost of the batched-input signature on the request path, and stateful streaming.

1. validate_inputs per call, old (before issue 17) vs new, on the digits signature (one batched input)
   and, new only, on the stateful signature; interleaved rounds, median and spread.
2. A stateful model streamed through the real local API (Unix socket, gRPC client): calls/s of one
   caller feeding its state back, micro-batching off vs on (on: the model is excluded, so the same).
Run: .venv/bin/python -m bench.inference.signature_cost   (the "old" signature module is read from git:
     `git show fdc7808^:agent/inference/signature.py`, so run it inside the repository's checkout)
"""

from __future__ import annotations

import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from agent.inference.signature import Signature, TensorSpec, declare_batched, validate_inputs

OLD = Path(tempfile.mkdtemp()) / "old_signature.py"
OLD.write_bytes(
    subprocess.run(
        ["git", "show", "fdc7808^:agent/inference/signature.py"], cwd=ROOT, check=True, capture_output=True
    ).stdout
)
spec = importlib.util.spec_from_file_location("old_sig", OLD)
old = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
sys.modules["old_sig"] = old
spec.loader.exec_module(old)  # type: ignore[union-attr]

ROUNDS, CALLS = 7, 20000
new_sig = Signature(inputs=declare_batched([TensorSpec("input", "float32", (None, 1, 8, 8))]), outputs=())
old_sig = old.Signature(inputs=(old.TensorSpec("input", "float32", (None, 1, 8, 8)),), outputs=())
x = {"input": np.zeros((1, 1, 8, 8), np.float32)}
from agent.inference.onnx_backend import OnnxRuntime
from tests.fixtures.stateful import build_stateful_onnx, initial_state

tmp = Path(tempfile.mkdtemp())
model = build_stateful_onnx(tmp / "vad.onnx")
st_sig = OnnxRuntime(model).signature
st = {"x": np.zeros((1, 16), np.float32), "state": initial_state(1), "sr": np.array(16000)}


def per_call_us(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    for _ in range(CALLS):
        fn()
    return (time.perf_counter() - t0) / CALLS * 1e6


rows: dict[str, list[float]] = {"old digits": [], "new digits": [], "new stateful": []}
for _ in range(ROUNDS):
    rows["old digits"].append(per_call_us(lambda: old.validate_inputs(old_sig, x, max_batch=256)))
    rows["new digits"].append(per_call_us(lambda: validate_inputs(new_sig, x, max_batch=256)))
    rows["new stateful"].append(per_call_us(lambda: validate_inputs(st_sig, st, max_batch=256)))
print("validate_inputs, µs per call (median [min-max] of", ROUNDS, "interleaved rounds of", CALLS, "calls)")
for k, v in rows.items():
    print(f"  {k:<14} {statistics.median(v):6.2f} [{min(v):.2f}-{max(v):.2f}]")
ratios = [n / o for n, o in zip(rows["new digits"], rows["old digits"], strict=True)]
print(
    f"  new/old digits paired ratio: median {statistics.median(ratios):.2f}"
    f" [{min(ratios):.2f}-{max(ratios):.2f}]"
)

from agent.client import EdgeloopClient
from agent.inference.engine import ServingOptions
from agent.profile import load_profile
from agent.serving.background import BackgroundService
from agent.serving.server import InferenceService

STREAM = 400
res: dict[str, list[float]] = {"micro_batch off": [], "micro_batch on": []}
services = {}
for label, mb in (("micro_batch off", False), ("micro_batch on", True)):
    d = tmp / label.replace(" ", "_")
    svc = InferenceService(
        d / "slots",
        load_profile("generic-x86"),
        d / "api.sock",
        options=ServingOptions(micro_batch=mb, micro_batch_wait_s=0.002),
    )
    bg = BackgroundService(svc)
    bg.__enter__()
    bg.call(lambda bg=bg: bg.service.install(model, name="vad", version="1", warmup=st))
    services[label] = (bg, d / "api.sock")
for _ in range(ROUNDS):
    for label, (_bg, sock) in services.items():
        with EdgeloopClient(sock) as client:
            state = initial_state(1)
            t0 = time.perf_counter()
            for i in range(STREAM):
                out = client.predict_all(
                    {"x": np.full((1, 16), i % 7, np.float32), "state": state, "sr": st["sr"]}
                )
                state = out["state_out"]
            res[label].append(STREAM / (time.perf_counter() - t0))
for bg, _ in services.values():
    bg.__exit__(None, None, None)
print(
    "stateful stream through the local API (gRPC, Unix socket), calls/s,"
    f" {ROUNDS} interleaved rounds of {STREAM}"
)
for k, v in res.items():
    print(f"  {k:<16} {statistics.median(v):7.0f} [{min(v):.0f}-{max(v):.0f}]")
