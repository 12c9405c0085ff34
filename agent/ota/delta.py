"""Model-aware delta: rebuild a target from chunks of models already on the device plus fetched spans.

A signed chunk manifest (a TUF target of the release) lists ``[offset, length, sha256]`` chunks
covering the artifact. `ChunkIndex` maps chunk hashes to where the same bytes already live (any
model the device holds whose manifest it kept). `rebuild` streams the target into a ``.partial``
file in order: local chunks are read and re-hashed, missing runs are fetched with one Range
request per run (coalesced up to `max_request`) and hashed, so memory stays bounded by one run. A
crash leaves a prefix of verified chunks that the next call keeps. The caller still checks the
whole-file hash against the signed target: the delta is an optimisation, never a trust root.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from agent.errors import IntegrityError

logger = logging.getLogger(__name__)

FetchRange = Callable[[int, int], bytes]  # (offset, length) -> bytes of the target


@dataclass(frozen=True)
class Chunk:
    offset: int
    length: int
    sha256: str


@dataclass
class RebuildStats:
    chunks: int = 0
    reused_chunks: int = 0
    reused_bytes: int = 0
    fetched_bytes: int = 0
    requests: int = 0


def parse_manifest(data: bytes, *, length: int, sha256: str) -> list[Chunk]:
    """Chunks of a manifest that must describe exactly the target (`length`, `sha256`).

    Raises:
        IntegrityError: malformed, or chunks do not tile [0, length).
    """
    try:
        raw = json.loads(data)
        chunks = [Chunk(int(o), int(n), str(h)) for o, n, h in raw["chunks"]]
        ok = raw["length"] == length and raw["sha256"] == sha256
    except (ValueError, KeyError, TypeError) as err:
        raise IntegrityError(f"chunk manifest unreadable: {err}") from err
    pos = 0
    for c in chunks:
        if c.offset != pos or c.length <= 0:
            ok = False
        pos = c.offset + c.length
    if not ok or pos != length:
        raise IntegrityError("chunk manifest does not describe the signed target")
    return chunks


class ChunkIndex:
    """sha256 -> (file, offset, length) over the models the device holds."""

    def __init__(self) -> None:
        self._where: dict[str, tuple[Path, int, int]] = {}

    def add(self, path: Path, chunks: Iterable[Chunk]) -> None:
        for c in chunks:
            self._where.setdefault(c.sha256, (path, c.offset, c.length))

    def read(self, sha256: str) -> bytes | None:
        """The chunk's bytes from a local file, or None (absent, unreadable or changed on disk)."""
        where = self._where.get(sha256)
        if where is None:
            return None
        path, offset, length = where
        try:
            with path.open("rb") as fh:
                fh.seek(offset)
                data = fh.read(length)
        except OSError:
            return None
        return data if hashlib.sha256(data).hexdigest() == sha256 else None

    def has(self, sha256: str) -> bool:
        return sha256 in self._where

    def __len__(self) -> int:
        return len(self._where)


def _verified_prefix(partial: Path, chunks: list[Chunk]) -> int:
    """How many leading chunks the partial file already holds intact."""
    if not partial.exists():
        return 0
    size = partial.stat().st_size
    done = 0
    with partial.open("rb") as fh:
        for c in chunks:
            if c.offset + c.length > size or hashlib.sha256(fh.read(c.length)).hexdigest() != c.sha256:
                break
            done += 1
    return done


def rebuild(
    chunks: list[Chunk], index: ChunkIndex, fetch: FetchRange, partial: Path, *, max_request: int = 8 << 20
) -> RebuildStats:
    """Write the target into `partial` from local chunks and fetched runs (resuming a prefix).

    Raises:
        IntegrityError: a fetched chunk does not hash to the manifest.
        TransportError, HttpStatusError: from `fetch`.
    """
    stats = RebuildStats(chunks=len(chunks))
    start = _verified_prefix(partial, chunks)
    pos = chunks[start].offset if start < len(chunks) else sum(c.length for c in chunks)
    with partial.open("r+b" if partial.exists() else "wb") as out:
        out.seek(pos)
        out.truncate()
        i = start
        while i < len(chunks):
            local = index.read(chunks[i].sha256)
            if local is not None:
                out.write(local)
                stats.reused_chunks += 1
                stats.reused_bytes += len(local)
                i += 1
                continue
            j = _missing_run(chunks, i, index, max_request)
            _write_fetched(out, chunks[i:j], fetch, stats)
            i = j
        out.flush()
        os.fsync(out.fileno())
    logger.info(
        "delta rebuilt chunks=%d reused=%d reused_bytes=%d fetched_bytes=%d requests=%d",
        stats.chunks, stats.reused_chunks, stats.reused_bytes, stats.fetched_bytes, stats.requests,
    )  # fmt: skip
    return stats


def _missing_run(chunks: list[Chunk], i: int, index: ChunkIndex, max_request: int) -> int:
    j, size = i + 1, chunks[i].length
    while j < len(chunks) and size + chunks[j].length <= max_request and not index.has(chunks[j].sha256):
        size += chunks[j].length
        j += 1
    return j


def _write_fetched(out: BinaryIO, run: list[Chunk], fetch: FetchRange, stats: RebuildStats) -> None:
    start = run[0].offset
    data = fetch(start, sum(c.length for c in run))
    stats.requests += 1
    stats.fetched_bytes += len(data)
    view = memoryview(data)
    for c in run:
        piece = view[c.offset - start : c.offset - start + c.length]
        if hashlib.sha256(piece).hexdigest() != c.sha256:
            raise IntegrityError(f"fetched chunk at {c.offset} does not match the manifest")
    out.write(data)
