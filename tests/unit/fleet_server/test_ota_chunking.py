"""Chunk layouts: a chunk per large ONNX initializer (the glue before it rides along),
content-defined cuts elsewhere that survive an insertion, and a layout that tiles the file."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fleet_server.ota.chunking import build_layout, cdc_cuts, onnx_tensor_spans


def _model(path: Path, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    weights = {
        "w1": rng.standard_normal((64, 32)).astype(np.float32),
        "w2": rng.standard_normal((32, 10)).astype(np.float32),
    }
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    onnx.save(helper.make_model(graph), path)
    return weights


def test_onnx_spans_are_the_initializer_payloads(tmp_path: Path) -> None:
    weights = _model(tmp_path / "m.onnx", 0)
    data = (tmp_path / "m.onnx").read_bytes()
    spans = onnx_tensor_spans(data)
    assert sorted(data[o : o + n] for o, n in spans) == sorted(w.tobytes() for w in weights.values())


def test_manifest_tiles_the_file_and_a_head_change_touches_one_chunk(tmp_path: Path) -> None:
    _model(tmp_path / "a.onnx", 0)
    m = onnx.load(tmp_path / "a.onnx")
    w2 = numpy_helper.to_array(m.graph.initializer[1]) + 0.01
    m.graph.initializer[1].CopyFrom(numpy_helper.from_array(w2, "w2"))
    onnx.save(m, tmp_path / "b.onnx")
    # min_chunk=64: every initializer of this small model starts a chunk (the default is 32 KiB)
    a, b = build_layout(tmp_path / "a.onnx", min_chunk=64), build_layout(tmp_path / "b.onnx", min_chunk=64)
    data = (tmp_path / "b.onnx").read_bytes()
    assert b.kind == "onnx-tensors" and b.sha256 == hashlib.sha256(data).hexdigest()
    pos = 0
    for c in b.chunks:
        assert c.offset == pos and hashlib.sha256(data[c.offset : c.offset + c.length]).digest() == c.sha256
        pos += c.length
    assert pos == len(data)
    held = {c.sha256 for c in a.chunks}
    (changed,) = [c for c in b.chunks if c.sha256 not in held]
    assert changed.key == "w2" and w2.tobytes() in data[changed.offset : changed.offset + changed.length]
    assert changed.length < w2.nbytes + 64  # the weight and the few glue bytes before it


def test_content_defined_cuts_survive_an_insertion() -> None:
    data = os.urandom(1 << 20)
    before = cdc_cuts(data)
    after = cdc_cuts(b"inserted" + data)
    assert before[-1] == len(data) and len(before) > 8
    shared = set(before) & {c - 8 for c in after}
    assert len(shared) >= len(before) - 2


def test_patches_for_a_fine_tuned_tensor(tmp_path: Path) -> None:
    from fleet_server.ota.patches import add_patches
    from protos.edgeloop import chunk_patch
    from protos.edgeloop.chunk_manifest import patch_file_name

    _model(tmp_path / "a.onnx", 0)
    m = onnx.load(tmp_path / "a.onnx")
    w2 = numpy_helper.to_array(m.graph.initializer[1]) * np.float32(1.0001)
    m.graph.initializer[1].CopyFrom(numpy_helper.from_array(w2, "w2"))
    onnx.save(m, tmp_path / "b.onnx")
    a, b = build_layout(tmp_path / "a.onnx", min_chunk=64), build_layout(tmp_path / "b.onnx", min_chunk=64)
    refs = add_patches(b, tmp_path / "b.onnx", a, tmp_path / "a.onnx", tmp_path / "patches")
    ((i, ref),) = refs.items()
    chunk, base = b.chunks[i], next(c for c in a.chunks if c.sha256 == ref.base)
    patch = (tmp_path / "patches" / patch_file_name(ref.base, chunk.sha256)).read_bytes()
    assert ref.length == len(patch) < 0.8 * chunk.length and ref.sha256 == hashlib.sha256(patch).digest()
    old, new = (tmp_path / "a.onnx").read_bytes(), (tmp_path / "b.onnx").read_bytes()
    rebuilt = chunk_patch.apply(ref.kind, old[base.offset : base.offset + base.length], patch, chunk.length)
    assert rebuilt == new[chunk.offset : chunk.offset + chunk.length]
