"""A delta rebuild in a real agent-side process (the real `Transfer` and `Downloader` over loopback
HTTP Range) is SIGKILLed halfway; the restarted process keeps the verified prefix, fetches only
the rest, and the result hashes to the signed target. The 100 MB memory bound is a slow test."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fleet_server.ota.chunking import build_layout, manifest_bytes
from fleet_server.ota.patches import add_patches
from tests.helpers.net import free_port

ROOT = Path(__file__).resolve().parents[2]

_CHILD = r"""
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import urllib3
from agent.ota.fetcher import Downloader, RetryPolicy
from agent.ota.transfer import Transfer
from agent.ota.trust import Plan, TargetRef

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
    return 0

root, spec = Path(sys.argv[2]), json.loads(sys.argv[3])
dl = Downloader(urllib3.PoolManager(), policy=RetryPolicy(attempts=2, initial_s=0.05))
held = [(Path(spec["held"]), spec["held_sha"])]
(root / "downloads").mkdir(exist_ok=True)
transfer = Transfer(
    downloader=dl, downloads=root / "downloads", manifests=root / "manifests", held=lambda: held
)
ref = lambda k: TargetRef(**spec[k])
plan = Plan("dep", 2, "m", "2", ref("artifact"), ref("manifest"), None, 0.0)
base = hwm()
how = transfer.fetch(plan, root / "model.onnx", use_delta=True)
print(json.dumps({"how": how, "fetched": dl.bytes_received, "growth": hwm() - base}))
"""


class _Repo(BaseHTTPRequestHandler):
    """Files under `root`, with Range; each request waits `delay` seconds (a slow link)."""

    root = Path()
    delay = 0.0
    log: list[tuple[str, str]] = []  # noqa: RUF012 (class-level on purpose: one server per test)

    def do_GET(self) -> None:
        rng = self.headers.get("Range", "")
        type(self).log.append((self.path, rng))  # on arrival: a killed client's request counts too
        time.sleep(type(self).delay)
        path = self.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        if rng.startswith("bytes="):
            first, _, last = rng[6:].partition("-")
            start, end = int(first), int(last) + 1 if last else len(data)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
            data = data[start:end]
        else:
            self.send_response(200)
        try:
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client was killed while this request waited

    def log_message(self, *_: Any) -> None:
        return


def _model(path: Path, seed: int, n: int, size: int = 512) -> Path:
    """An ONNX chain of `n` float MatMuls (1 MiB each at size 512); `seed` picks every other one
    from the third on (retrained from scratch: nothing to patch, fetched whole)."""
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((size, size)).astype(np.float32) for _ in range(n)]
    retrained = np.random.default_rng(seed)
    for i in range(2, n, 2):
        weights[i] = retrained.standard_normal((size, size)).astype(np.float32)
    nodes = [helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"h{i + 1}"]) for i in range(n)]
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, size])],
        [helper.make_tensor_value_info(f"h{n}", TensorProto.FLOAT, [1, size])],
        [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)],
    )  # fmt: skip
    onnx.save(helper.make_model(graph), path)
    return path


def _release(tmp: Path, n: int, size: int = 512) -> dict[str, Any]:
    """v1 held by the device (with its manifest), v2 published under targets/ as the server does."""
    repo, device = tmp / "repo", tmp / "device"
    (repo / "targets" / "m").mkdir(parents=True)
    (device / "manifests").mkdir(parents=True)
    old, new = _model(tmp / "v1.onnx", 1, n, size), _model(tmp / "v2.onnx", 2, n, size)
    lo, ln = build_layout(old), build_layout(new)
    refs = add_patches(ln, new, lo, old, repo / "targets" / "patches")
    (device / "manifests" / f"{lo.sha256}.json").write_bytes(manifest_bytes(lo))  # kept since v1
    man = manifest_bytes(ln, refs)
    man_sha = hashlib.sha256(man).hexdigest()
    (repo / "targets" / "m" / f"{man_sha}.chunks.bin").write_bytes(man)
    (repo / "targets" / "m" / f"{ln.sha256}.model.onnx").write_bytes(new.read_bytes())
    changed = [(c.offset, c.length) for c in ln.chunks if c.sha256 not in {h.sha256 for h in lo.chunks}]
    return {
        "held": str(old), "held_sha": lo.sha256, "changed": changed, "new": str(new),
        "artifact": {"path": "m/model.onnx", "url": f"/targets/m/{ln.sha256}.model.onnx",
                     "length": ln.length, "sha256": ln.sha256},
        "manifest": {"path": "m/chunks.bin", "url": f"/targets/m/{man_sha}.chunks.bin",
                     "length": len(man), "sha256": man_sha},
    }  # fmt: skip


class _Server:
    def __init__(self, root: Path) -> None:
        handler = type("Repo", (_Repo,), {"root": root, "delay": 0.0, "log": []})
        self.handler = handler
        self.port = free_port()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def spec(self, release: dict[str, Any]) -> dict[str, Any]:
        base = f"http://127.0.0.1:{self.port}"
        out = dict(release)
        for k in ("artifact", "manifest"):
            out[k] = {**release[k], "url": base + release[k]["url"]}
        return out

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _child(device: Path, spec: dict[str, Any]) -> subprocess.Popen[str]:
    args = [sys.executable, "-c", _CHILD, str(ROOT), str(device), json.dumps(spec)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_delta_rebuild_resumes_after_sigkill_and_verifies(tmp_path: Path) -> None:
    release = _release(tmp_path, n=8)  # 8 MiB model, tensors 2, 4 and 6 retrained
    server = _Server(tmp_path / "repo")
    try:
        spec = server.spec(release)
        server.handler.delay = 0.5  # a slow link: one request per retrained chunk, 0.5 s each
        proc = _child(tmp_path / "device", spec)
        partial = tmp_path / "device" / "model.onnx.partial"
        (_, _), (second, second_len), (third, _) = release["changed"]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (
            not partial.exists() or partial.stat().st_size < second + second_len
        ):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)  # two of three retrained chunks fetched, the third not yet
        proc.wait()
        kept = partial.stat().st_size
        assert second + second_len <= kept < release["artifact"]["length"]
        server.handler.delay = 0.0
        before = len(server.handler.log)
        proc = _child(tmp_path / "device", spec)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        result = json.loads(out.strip().splitlines()[-1])
    finally:
        server.close()
    rebuilt = tmp_path / "device" / "model.onnx"
    assert hashlib.sha256(rebuilt.read_bytes()).hexdigest() == release["artifact"]["sha256"]
    assert result["how"].startswith("delta")
    # the restarted process fetched only the chunk past its verified prefix (manifest cached on disk)
    ranges_after = [r for _, r in server.handler.log[before:] if r]
    assert [int(r[6:].partition("-")[0]) for r in ranges_after] == [third]
    assert result["fetched"] < sum(n for _, n in release["changed"]) / 2


@pytest.mark.slow
def test_rebuilding_a_100_mb_model_stays_within_64_mb(tmp_path: Path) -> None:
    release = _release(tmp_path, n=25, size=1024)  # 25 x 4 MiB tensors, every other one retrained
    server = _Server(tmp_path / "repo")
    try:
        proc = _child(tmp_path / "device", server.spec(release))
        out, err = proc.communicate(timeout=600)
    finally:
        server.close()
    assert proc.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    changed = sum(n for _, n in release["changed"])
    assert result["how"].startswith("delta") and result["fetched"] < changed + (1 << 20)
    assert result["growth"] <= 64 << 20, result
    data = (tmp_path / "device" / "model.onnx").read_bytes()
    assert hashlib.sha256(data).hexdigest() == release["artifact"]["sha256"]
