"""Chunk manifest format 2 (binary) as the server writes it and the agent reads it; format 1 (JSON,
older releases) still read; a newer format refused by name; malformed bytes always an
IntegrityError, never another exception."""

from __future__ import annotations

import hashlib
import json
import lzma
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from agent.errors import IntegrityError
from agent.ota.delta import ChunkIndex, UnsupportedManifest, parse_manifest, rebuild
from fleet_server.ota.chunking import build_layout, manifest_bytes
from fleet_server.ota.patches import add_patches
from protos.edgeloop import chunk_manifest
from protos.edgeloop.chunk_manifest import MAGIC, put_varint


def _onnx(path: Path, head_scale: float = 1.0, head_out: int = 10) -> Path:
    rng = np.random.default_rng(0)
    weights = {f"w{i}": rng.standard_normal((128, 128)).astype(np.float32) for i in range(4)}  # 64 KiB each
    weights["head"] = (rng.standard_normal((128, head_out)) * head_scale).astype(np.float32)
    names = list(weights)
    nodes = [helper.make_node("MatMul", [f"h{i}", n], [f"h{i + 1}"]) for i, n in enumerate(names)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, 128])],
        [helper.make_tensor_value_info(f"h{len(names)}", TensorProto.FLOAT, [1, head_out])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )  # fmt: skip
    onnx.save(helper.make_model(graph), path)
    return path


def test_server_manifest_reads_back_on_the_agent_and_is_compact(tmp_path: Path) -> None:
    old = _onnx(tmp_path / "a.onnx")
    new = _onnx(tmp_path / "b.onnx", head_scale=1.001)
    la, lb = build_layout(old), build_layout(new)
    refs = add_patches(lb, new, la, old, tmp_path / "patches")
    data = manifest_bytes(lb, refs)
    chunks = parse_manifest(data, length=lb.length, sha256=lb.sha256)
    assert [(c.offset, c.length, c.sha256) for c in chunks] == [
        (c.offset, c.length, c.sha256.hex()) for c in lb.chunks
    ]
    assert lb.kind == "onnx-tensors" and len(lb.chunks) == 6  # header, four 64 KiB weights, head + glue
    ((i, ref),) = refs.items()
    assert chunks[i].base == ref.base.hex() and chunks[i].patch_length == ref.length
    assert not ref.inline and (tmp_path / "patches" / chunks[i].patch_file).stat().st_size == ref.length
    legacy = json.dumps({"chunks": [[c.offset, c.length, c.sha256.hex()] for c in lb.chunks]})
    assert len(data) < 40 * len(lb.chunks) + 100 < len(legacy)  # 32-byte digests + varints


def test_format_1_json_manifests_still_rebuild_with_their_xz_patches(tmp_path: Path) -> None:
    """A release published before format 2: hex digests, xz(new XOR old) patches named .xz."""
    old = os.urandom(48 * 1024)
    new = bytearray(old)
    new[5000] ^= 1
    size = 16 * 1024

    def entries(data: bytes) -> list[list[object]]:
        return [[o, size, hashlib.sha256(data[o : o + size]).hexdigest()] for o in range(0, len(data), size)]

    held_entries, new_entries = entries(old), entries(bytes(new))
    xor = bytes(a ^ b for a, b in zip(old[:size], new[:size], strict=True))
    patch = lzma.compress(xor)
    new_entries[0] += [held_entries[0][2], len(patch), hashlib.sha256(patch).hexdigest()]
    doc = {"format": 1, "length": len(new), "sha256": hashlib.sha256(new).hexdigest(), "kind": "cdc"}
    manifest = json.dumps({**doc, "chunks": new_entries}).encode()
    chunks = parse_manifest(manifest, length=len(new), sha256=doc["sha256"])
    assert chunks[0].patch_file == f"{held_entries[0][2]}-{new_entries[0][2]}.xz"
    (tmp_path / "old.bin").write_bytes(old)
    held_doc = {**doc, "sha256": hashlib.sha256(old).hexdigest(), "chunks": held_entries}
    index = ChunkIndex()
    index.add(
        tmp_path / "old.bin",
        parse_manifest(json.dumps(held_doc).encode(), length=len(old), sha256=held_doc["sha256"]),
    )
    stats = rebuild(chunks, index, lambda o, n: b"", tmp_path / "new.partial", fetch_patch=lambda c: patch)
    assert (tmp_path / "new.partial").read_bytes() == bytes(new) and stats.patched_chunks == 1


def test_a_newer_format_is_refused_saying_what_the_agent_reads() -> None:
    head = bytearray(MAGIC)
    put_varint(head, 3)
    with pytest.raises(UnsupportedManifest, match=r"format 3 .*reads formats 1, 2.*update the agent"):
        parse_manifest(bytes(head) + b"\0" * 40, length=10, sha256="0" * 64)


def test_malformed_manifests_are_integrity_errors(tmp_path: Path) -> None:
    layout = build_layout(_onnx(tmp_path / "a.onnx"))
    good = manifest_bytes(layout)
    parse_manifest(good, length=layout.length, sha256=layout.sha256)
    body = chunk_manifest.decode(good)
    short = chunk_manifest.ChunkManifest(body.length, body.layout, body.chunks[:-1])
    for bad, length in (
        (good, layout.length + 1),  # describes another length
        (chunk_manifest.encode(short), layout.length),  # does not tile the file
        (good[:-3], layout.length),
        (good + b"\0", layout.length),
        (b"PK\x03\x04", layout.length),
        (good[:4] + b"\x02\x06" + good[6:], layout.length),  # unknown flag
    ):
        with pytest.raises(IntegrityError):
            parse_manifest(bad, length=length, sha256=layout.sha256)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 1))
def test_fuzzed_manifest_bytes_never_escape_as_other_errors(tail: bytes, flags: int) -> None:
    head = bytearray(MAGIC)
    put_varint(head, 2)
    put_varint(head, flags)
    body = lzma.compress(tail, format=lzma.FORMAT_RAW, filters=chunk_manifest._filters()) if flags else tail
    try:
        parse_manifest(bytes(head) + body, length=1000, sha256="0" * 64)
    except IntegrityError:
        pass
