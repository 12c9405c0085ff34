"""Delta rebuild: local chunks reused, missing runs fetched in coalesced ranges, a crash's verified
prefix kept, corrupt bytes (local or fetched) never written; gates arithmetic."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from agent.errors import IntegrityError
from agent.ota import gates
from agent.ota.delta import Chunk, ChunkIndex, parse_manifest, rebuild


def _chunks(data: bytes, size: int) -> list[Chunk]:
    return [
        Chunk(o, min(size, len(data) - o), hashlib.sha256(data[o : o + size]).hexdigest())
        for o in range(0, len(data), size)
    ]


class Remote:
    """The target served from memory (a working stand-in for HTTP Range reads)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.calls: list[tuple[int, int]] = []

    def __call__(self, offset: int, length: int) -> bytes:
        self.calls.append((offset, length))
        return self.data[offset : offset + length]


def _setup(tmp_path: Path) -> tuple[bytes, bytes, ChunkIndex, Path]:
    old = os.urandom(64 * 1024)
    new = bytearray(old)
    new[10 * 1024 : 12 * 1024] = os.urandom(2 * 1024)  # one changed chunk
    new[40 * 1024 : 41 * 1024] = os.urandom(1024)
    held = tmp_path / "old.bin"
    held.write_bytes(old)
    index = ChunkIndex()
    index.add(held, _chunks(old, 4096))
    return old, bytes(new), index, tmp_path / "new.partial"


def test_rebuild_reuses_local_chunks_and_fetches_only_changes(tmp_path: Path) -> None:
    _, new, index, partial = _setup(tmp_path)
    remote = Remote(new)
    stats = rebuild(_chunks(new, 4096), index, remote, partial)
    assert partial.read_bytes() == new
    assert stats.fetched_bytes == 2 * 4096 and stats.requests == 2
    assert remote.calls == [(8192, 4096), (40960, 4096)]


def test_rebuild_resumes_a_verified_prefix_and_truncates_garbage(tmp_path: Path) -> None:
    _, new, index, partial = _setup(tmp_path)
    partial.write_bytes(new[:20000] + b"garbage")
    remote = Remote(new)
    stats = rebuild(_chunks(new, 4096), index, remote, partial)
    assert partial.read_bytes() == new
    assert remote.calls == [(40960, 4096)]  # the changed chunk before 16384 was already on disk
    assert stats.reused_chunks == len(_chunks(new, 4096)) - 4 - 1


def test_corrupt_local_chunk_is_fetched_and_corrupt_remote_refused(tmp_path: Path) -> None:
    old, new, index, partial = _setup(tmp_path)
    held = tmp_path / "old.bin"
    held.write_bytes(b"\0" * 4096 + old[4096:])  # local copy damaged after indexing
    rebuild(_chunks(new, 4096), index, Remote(new), partial)
    assert partial.read_bytes() == new
    partial.unlink()
    evil = bytearray(new)
    evil[41000] ^= 1
    with pytest.raises(IntegrityError):
        rebuild(_chunks(new, 4096), index, Remote(bytes(evil)), partial)


def test_manifest_must_tile_the_signed_target() -> None:
    data = os.urandom(10000)
    chunks = _chunks(data, 4096)
    sha = hashlib.sha256(data).hexdigest()
    good = {"length": 10000, "sha256": sha, "chunks": [[c.offset, c.length, c.sha256] for c in chunks]}
    assert parse_manifest(json.dumps(good).encode(), length=10000, sha256=sha) == chunks
    for bad in (
        {**good, "chunks": good["chunks"][1:]},
        {**good, "chunks": good["chunks"][:-1]},
        {**good, "sha256": "0" * 64},
        {"chunks": "x"},
    ):
        with pytest.raises(IntegrityError):
            parse_manifest(json.dumps(bad).encode(), length=10000, sha256=sha)


def test_gates() -> None:
    logits = np.eye(10, dtype=np.float32)[[0, 1, 2, 3]]
    assert gates.golden_accuracy(logits, np.array([0, 1, 2, 9])) == 0.75
    assert not gates.golden_verdict(0.75, 0.8).passed
    agree, dist = gates.agreement_and_distance(logits * 5, np.roll(logits, 1, axis=1) * 5)
    assert agree == 0.0 and dist > 0.9
    agree, dist = gates.agreement_and_distance(logits, logits)
    assert (agree, dist) == (1.0, 0.0)
    limits = gates.thresholds({"max_latency_ratio": 1.5, "unknown": 3})
    assert "unknown" not in limits
    slow = gates.shadow_verdict(
        agreement=1, distance=0, p95_current_s=0.01, p95_candidate_s=0.1, limits=limits
    )
    assert not slow.passed and "latency" in slow.detail
    assert not gates.watch_verdict(requests=100, errors=6, limits=limits).passed
    assert gates.watch_verdict(requests=0, errors=0, limits=limits).passed


def _patched_manifest(old: bytes, new: bytes, size: int) -> tuple[list[Chunk], dict[str, bytes]]:
    import lzma

    chunks, patches = [], {}
    for c_old, c_new in zip(_chunks(old, size), _chunks(new, size), strict=True):
        if c_old.sha256 == c_new.sha256:
            chunks.append(c_new)
            continue
        xor = bytes(
            a ^ b
            for a, b in zip(
                old[c_old.offset : c_old.offset + size], new[c_new.offset : c_new.offset + size], strict=True
            )
        )
        patch = lzma.compress(xor)
        patches[c_new.sha256] = patch
        chunks.append(
            Chunk(
                c_new.offset,
                c_new.length,
                c_new.sha256,
                c_old.sha256,
                len(patch),
                hashlib.sha256(patch).hexdigest(),
            )
        )
    return chunks, patches


def test_xor_patches_rebuild_changed_chunks_from_their_base(tmp_path: Path) -> None:
    old, _, index, partial = _setup(tmp_path)
    new = bytearray(old)
    new[5000] ^= 0x01  # a fine-tune: small changes inside chunks
    new[30000] ^= 0x10
    chunks, patches = _patched_manifest(old, bytes(new), 4096)
    remote = Remote(bytes(new))
    stats = rebuild(chunks, index, remote, partial, fetch_patch=lambda c: patches[c.sha256])
    assert partial.read_bytes() == bytes(new)
    assert remote.calls == [] and stats.patched_chunks == 2 and stats.patch_bytes < 400
    partial.unlink()
    evil = {k: v[:-1] + bytes([v[-1] ^ 1]) for k, v in patches.items()}
    with pytest.raises(IntegrityError, match="patch"):
        rebuild(chunks, index, remote, partial, fetch_patch=lambda c: evil[c.sha256])


def test_xz_stream_is_bounded_and_complete(tmp_path: Path) -> None:
    import lzma

    from agent.ota.transfer import _decompress

    data = os.urandom(1000) * 300
    packed = lzma.compress(data)
    (tmp_path / "ok.xz").write_bytes(packed)
    _decompress(tmp_path / "ok.xz", tmp_path / "out", limit=len(data))
    assert (tmp_path / "out").read_bytes() == data
    with pytest.raises(IntegrityError, match="past"):
        _decompress(tmp_path / "ok.xz", tmp_path / "out", limit=len(data) - 1)
    (tmp_path / "cut.xz").write_bytes(packed[: len(packed) // 2])
    with pytest.raises(IntegrityError, match="truncated"):
        _decompress(tmp_path / "cut.xz", tmp_path / "out", limit=len(data))
