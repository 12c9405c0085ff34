"""Chunk patches: every transform and codec round-trips, the smallest is chosen, corrupt or foreign
patches are refused before they are trusted, an agent without bsdiff4 fetches those chunks whole;
TFLite files are cut per tensor buffer; a device holding a sibling model (same backbone, other
head) rebuilds from its chunks where a pairwise bsdiff4 patch does not apply."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import bsdiff4
import numpy as np
import pytest

from agent.errors import IntegrityError
from agent.ota.delta import ChunkIndex, parse_manifest, patchable, rebuild
from fleet_server.ota.chunking import build_layout, manifest_bytes, tflite_buffers
from fleet_server.ota.patches import add_patches
from protos.edgeloop import chunk_patch as cp
from tests.unit.agent.test_manifest_format import _onnx

RNG = np.random.default_rng(7)
FLOATS = RNG.standard_normal(4096).astype(np.float32)
INT8 = RNG.integers(-128, 128, 8192).astype(np.int8)


def _pairs() -> dict[str, tuple[bytes, bytes]]:
    nudged = (FLOATS + RNG.standard_normal(4096).astype(np.float32) * 1e-4).astype(np.float32)
    stepped = np.clip(INT8.astype(np.int16) + RNG.integers(-1, 2, 8192), -128, 127).astype(np.int8)
    moved = INT8.tobytes()[:3000] + os.urandom(16) + INT8.tobytes()[3000:]
    return {
        "fp32 fine-tune": (FLOATS.tobytes(), nudged.tobytes()),
        "int8 fine-tune": (INT8.tobytes(), stepped.tobytes()),
        "insertion (other length)": (INT8.tobytes(), moved),
    }


@pytest.mark.parametrize("name", list(_pairs()))
def test_make_picks_the_smallest_and_apply_rebuilds(name: str) -> None:
    base, new = _pairs()[name]
    made = cp.make(base, new)
    assert made is not None
    kind, payload = made
    assert cp.apply(kind, base, payload, len(new)) == new
    assert len(payload) <= len(bsdiff4.diff(base, new))  # never worse than a bsdiff4 patch
    if len(base) != len(new):
        assert kind >> 4 == cp.BSDIFF


@pytest.mark.parametrize("transform", [cp.XOR, cp.SUB, cp.BSDIFF])
@pytest.mark.parametrize("codec", [cp.LZMA2, cp.DEFLATE, cp.BZIP2])
def test_every_kind_round_trips_and_refuses_damage(transform: int, codec: int) -> None:
    base, new = _pairs()["int8 fine-tune"]
    a, b = np.frombuffer(base, np.uint8), np.frombuffer(new, np.uint8)
    raw = {cp.XOR: (a ^ b).tobytes(), cp.SUB: (b - a).tobytes(), cp.BSDIFF: cp._bsdiff(base, new)}[transform]
    payload = dict(cp._encodings(raw))[codec] if codec != cp.DEFLATE else cp._encodings(raw)[2][1]
    kind = transform << 4 | codec
    assert cp.apply(kind, base, payload, len(new)) == new
    with pytest.raises(cp.PatchError):
        cp.apply(kind, base, payload[: len(payload) // 2], len(new))  # truncated
    with pytest.raises(cp.PatchError):
        cp.apply(kind, base, payload, len(new) + 1)  # for another chunk size
    with pytest.raises(cp.PatchError):
        cp.apply(transform << 4 | 9, base, payload, len(new))  # unknown codec


def _device(tmp_path: Path, held: Path, old_layout_of: Path) -> ChunkIndex:
    layout = build_layout(old_layout_of)
    index = ChunkIndex()
    index.add(held, parse_manifest(manifest_bytes(layout), length=layout.length, sha256=layout.sha256))
    return index


def test_without_bsdiff4_the_agent_fetches_those_chunks_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = tmp_path / "a.bin"  # an opaque file: content-defined chunks
    old.write_bytes(np.random.default_rng(3).integers(0, 256, 200_000, dtype=np.uint8).tobytes())
    data = bytearray(old.read_bytes())
    data[100_000:100_000] = b"inserted"  # bytes move inside one chunk: only bsdiff pairs it
    new = tmp_path / "b.bin"
    new.write_bytes(bytes(data))
    la, lb = build_layout(old), build_layout(new)
    refs = add_patches(lb, new, la, old, tmp_path / "patches")
    assert [r.kind >> 4 for r in refs.values()] == [cp.BSDIFF]
    chunks = parse_manifest(manifest_bytes(lb, refs), length=lb.length, sha256=lb.sha256)
    index = _device(tmp_path, old, old)
    (patched,) = [c for c in chunks if c.base]
    assert patchable(patched, index)
    monkeypatch.setitem(sys.modules, "bsdiff4.core", None)  # an agent built without the wheel
    assert not cp.supported(patched.patch_kind) and not patchable(patched, index)
    fetched: list[int] = []

    def fetch(offset: int, length: int) -> bytes:
        fetched.append(length)
        return bytes(data[offset : offset + length])

    stats = rebuild(chunks, index, fetch, tmp_path / "c.partial", fetch_patch=lambda c: b"unused")
    assert (tmp_path / "c.partial").read_bytes() == bytes(data)
    assert stats.patched_chunks == 0 and fetched == [patched.length]


def test_a_tampered_or_foreign_patch_is_refused(tmp_path: Path) -> None:
    old, new = _onnx(tmp_path / "a.onnx"), _onnx(tmp_path / "b.onnx", head_scale=1.001)
    la, lb = build_layout(old), build_layout(new)
    refs = add_patches(lb, new, la, old, tmp_path / "patches")
    chunks = parse_manifest(manifest_bytes(lb, refs), length=lb.length, sha256=lb.sha256)
    (c,) = [c for c in chunks if c.base]
    good = (tmp_path / "patches" / c.patch_file).read_bytes()
    index = _device(tmp_path, old, old)
    data = new.read_bytes()
    for bad in (good[:-1] + bytes([good[-1] ^ 1]), good[:-1], os.urandom(len(good))):
        with pytest.raises(IntegrityError, match="patch"):
            rebuild(
                chunks,
                index,
                lambda o, n: data[o : o + n],
                tmp_path / "x.partial",
                fetch_patch=lambda _, e=bad: e,  # type: ignore[misc]
            )


def test_small_patches_ride_in_the_signed_manifest(tmp_path: Path) -> None:
    old = _onnx(tmp_path / "a.onnx")
    data = bytearray(old.read_bytes())
    data[-600] ^= 0x01  # one mantissa bit of the head
    new = tmp_path / "b.onnx"
    new.write_bytes(bytes(data))
    la, lb = build_layout(old), build_layout(new)
    refs = add_patches(lb, new, la, old, tmp_path / "patches")
    ((i, ref),) = refs.items()
    assert ref.inline and not (tmp_path / "patches").exists()  # no file, no digest, no request
    chunks = parse_manifest(manifest_bytes(lb, refs), length=lb.length, sha256=lb.sha256)
    assert chunks[i].patch_inline == ref.inline

    def no_fetch(*_: object) -> bytes:
        raise AssertionError("nothing should be fetched")

    stats = rebuild(
        chunks, _device(tmp_path, old, old), no_fetch, tmp_path / "b.partial", fetch_patch=no_fetch
    )
    assert (tmp_path / "b.partial").read_bytes() == bytes(data)
    assert stats.patched_chunks == 1 and stats.requests == 0


# ------------------------------------------------------------------ TFLite


def test_tflite_chunks_follow_the_tensor_buffers() -> None:
    from ai_edge_litert import schema_py_generated as schema

    from tests.fixtures.models import digits_models

    path = digits_models().tflite_fp32
    data = path.read_bytes()
    model = schema.Model.GetRootAsModel(data, 0)
    expected = {
        f"buffer{i}": model.Buffers(i).DataAsNumpy().tobytes()
        for i in range(model.BuffersLength())
        if model.Buffers(i).DataLength()
    }
    spans = tflite_buffers(data)
    assert {s.key: data[s.offset : s.offset + s.length] for s in spans} == expected
    layout = build_layout(path)
    assert layout.kind == "tflite-buffers"
    big = {s.key for s in spans if s.length >= 32 << 10}
    assert big and big <= {c.key for c in layout.chunks}  # every large buffer starts a chunk


def test_tflite_head_fine_tune_is_one_small_patch(tmp_path: Path) -> None:
    from ai_edge_litert import schema_py_generated as schema

    from tests.fixtures.models import digits_models

    old = digits_models().tflite_fp32
    data = bytearray(old.read_bytes())
    model = schema.Model.GetRootAsModel(bytes(data), 0)
    # the head: the last float buffer of 10 x 64 weights; nudge it as a fine-tune would
    head = next(s for s in tflite_buffers(bytes(data)) if s.length == 2560)
    assert model.Buffers(int(head.key.removeprefix("buffer"))).DataLength() == 2560
    weights = np.frombuffer(bytes(data[head.offset : head.offset + head.length]), np.float32) * np.float32(
        1.01
    )
    data[head.offset : head.offset + head.length] = weights.tobytes()
    new = tmp_path / "v2.tflite"
    new.write_bytes(bytes(data))
    la, lb = build_layout(old), build_layout(new)
    refs = add_patches(lb, new, la, old, tmp_path / "patches")
    manifest = manifest_bytes(lb, refs)
    patch_bytes = sum(r.length for r in refs.values())
    assert len(refs) == 1 and len(manifest) + patch_bytes < len(bsdiff4.diff(old.read_bytes(), bytes(data)))


# ------------------------------------------------------------------ a sibling on the device


def test_sibling_model_chunks_are_reused_where_bsdiff4_does_not_apply(tmp_path: Path) -> None:
    """The server believes the device holds A; it holds S (same backbone, a 5-class head)."""
    a = _onnx(tmp_path / "a.onnx", head_out=10)
    s = _onnx(tmp_path / "s.onnx", head_out=5)
    b = _onnx(tmp_path / "b.onnx", head_out=10, head_scale=1.01)  # A's head fine-tuned
    pairwise = bsdiff4.diff(a.read_bytes(), b.read_bytes())
    assert (
        hashlib.sha256(bsdiff4.patch(s.read_bytes(), pairwise)).digest()
        != hashlib.sha256(b.read_bytes()).digest()
    )
    la, lb = build_layout(a), build_layout(b)
    refs = add_patches(lb, b, la, a, tmp_path / "patches")
    chunks = parse_manifest(manifest_bytes(lb, refs), length=lb.length, sha256=lb.sha256)
    index = _device(tmp_path, s, s)
    data = b.read_bytes()
    patches = tmp_path / "patches"
    stats = rebuild(
        chunks, index, lambda o, n: data[o : o + n], tmp_path / "b.partial",
        fetch_patch=lambda c: (patches / c.patch_file).read_bytes(),
    )  # fmt: skip
    assert (tmp_path / "b.partial").read_bytes() == data
    assert stats.reused_chunks == 4 and stats.patched_chunks == 0  # S has no base for A's patch
    assert stats.fetched_bytes < 0.1 * len(data)
