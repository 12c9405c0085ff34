"""Model-aware delta: rebuild a target from chunks of models already on the device plus fetched spans.

A signed chunk manifest (a TUF target of the release) lists the chunks tiling the artifact, each
named by its sha256; a chunk may also name a base chunk and a patch against it, used when the
device holds the base (`protos.edgeloop.chunk_patch`: XOR, SUB or bsdiff4, under LZMA2, deflate or
bzip2). Two manifest formats are read: format 2 (binary, `protos.edgeloop.chunk_manifest`, what
releases ship now) and format 1 (JSON with hex digests and xz XOR patches, from older releases and
kept for models the device already holds); a newer format is refused with `UnsupportedManifest`,
whose message says what the agent reads, and the caller takes the full download.
`ChunkIndex` maps chunk hashes to where the same bytes already live (any model the device holds
whose manifest it kept). `rebuild` streams the target into a ``.partial``
file in order: local chunks are read and re-hashed, missing runs are fetched with one Range
request per run (coalesced up to `max_request`) and hashed, so memory stays bounded by one run
(or one chunk, its base and its patch). A crash leaves a prefix of verified chunks that the next
call keeps. The caller still checks the whole-file hash against the signed target: the delta is
an optimisation, never a trust root.
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
from protos.edgeloop import chunk_manifest, chunk_patch

logger = logging.getLogger(__name__)

FetchRange = Callable[[int, int], bytes]  # (offset, length) -> bytes of the target
FetchPatch = Callable[["Chunk"], bytes]  # chunk -> its patch file's bytes (exactly patch_length)


class UnsupportedManifest(IntegrityError):
    """The release's chunk manifest is in a format this agent does not read (a newer server)."""


@dataclass(frozen=True)
class Chunk:
    offset: int
    length: int
    sha256: str
    base: str = ""  # a chunk the patch applies to, when the release ships one
    patch_length: int = 0
    patch_sha256: str = ""
    patch_kind: int = chunk_patch.LEGACY_XOR_XZ  # format 1 patches are xz of new XOR base
    patch_inline: bytes = b""  # a small patch carried in the (signed) manifest itself

    @property
    def patch_file(self) -> str:
        """The patch's file name under the repository's ``targets/patches/``."""
        if self.patch_kind == chunk_patch.LEGACY_XOR_XZ:
            return f"{self.base}-{self.sha256}.xz"
        return chunk_manifest.patch_file_name(bytes.fromhex(self.base), bytes.fromhex(self.sha256))


@dataclass
class RebuildStats:
    chunks: int = 0
    reused_chunks: int = 0
    reused_bytes: int = 0
    fetched_bytes: int = 0
    requests: int = 0
    patched_chunks: int = 0
    patch_bytes: int = 0


def parse_manifest(data: bytes, *, length: int, sha256: str) -> list[Chunk]:
    """Chunks of a manifest (format 1 or 2) that must describe exactly the target (`length`, `sha256`).

    Format 1 repeats the artifact's sha256, which is compared; format 2 does not (the signed release
    target names its manifest, which binds the two), so only the length and the tiling are checked.

    Raises:
        UnsupportedManifest: a format this agent does not read.
        IntegrityError: malformed, or chunks do not tile [0, length).
    """
    try:
        version = chunk_manifest.version_of(data)
    except chunk_manifest.ManifestError as err:
        raise IntegrityError(f"chunk manifest unreadable: {err}") from err
    chunks, ok = _parse_v1(data, length, sha256) if version == 1 else _parse_binary(data, length)
    pos = 0
    for c in chunks:
        if c.offset != pos or c.length <= 0:
            ok = False
        pos = c.offset + c.length
    if not ok or pos != length:
        raise IntegrityError("chunk manifest does not describe the signed target")
    return chunks


def _parse_binary(data: bytes, length: int) -> tuple[list[Chunk], bool]:
    try:
        manifest = chunk_manifest.decode(data)
    except chunk_manifest.UnsupportedManifestError as err:
        raise UnsupportedManifest(str(err)) from err
    except chunk_manifest.ManifestError as err:
        raise IntegrityError(f"chunk manifest unreadable: {err}") from err
    chunks, pos = [], 0
    for c in manifest.chunks:
        p = c.patch
        if p is None:
            chunks.append(Chunk(pos, c.length, c.sha256.hex()))
        else:
            chunks.append(
                Chunk(pos, c.length, c.sha256.hex(), p.base.hex(), p.length, p.sha256.hex(), p.kind, p.inline)
            )
        pos += c.length
    return chunks, manifest.length == length


def _parse_v1(data: bytes, length: int, sha256: str) -> tuple[list[Chunk], bool]:
    try:
        raw = json.loads(data)
        chunks = [_chunk(entry) for entry in raw["chunks"]]
        ok = raw["length"] == length and raw["sha256"] == sha256
    except (ValueError, KeyError, TypeError) as err:
        raise IntegrityError(f"chunk manifest unreadable: {err}") from err
    return chunks, bool(ok)


def _chunk(entry: list[object]) -> Chunk:
    offset, length, sha = int(entry[0]), int(entry[1]), str(entry[2])  # type: ignore[call-overload]
    if len(entry) == 3:
        return Chunk(offset, length, sha)
    base, patch_length, patch_sha = str(entry[3]), int(entry[4]), str(entry[5])  # type: ignore[call-overload]
    return Chunk(offset, length, sha, base, patch_length, patch_sha)


def patchable(chunk: Chunk, index: ChunkIndex) -> bool:
    """Whether the chunk can be rebuilt from a patch here (base held, patch kind supported)."""
    return bool(chunk.base) and index.has(chunk.base) and chunk_patch.supported(chunk.patch_kind)


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
    chunks: list[Chunk],
    index: ChunkIndex,
    fetch: FetchRange,
    partial: Path,
    *,
    fetch_patch: FetchPatch | None = None,
    max_request: int = 8 << 20,
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
            patched = _patched(chunks[i], index, fetch_patch, stats)
            if patched is not None:
                out.write(patched)
                i += 1
                continue
            j = _missing_run(chunks, i, index, max_request, patches=fetch_patch is not None)
            _write_fetched(out, chunks[i:j], fetch, stats)
            i = j
        out.flush()
        os.fsync(out.fileno())
    logger.info(
        "delta rebuilt chunks=%d reused=%d reused_bytes=%d fetched_bytes=%d patched=%d patch_bytes=%d "
        "requests=%d",
        stats.chunks, stats.reused_chunks, stats.reused_bytes, stats.fetched_bytes, stats.patched_chunks,
        stats.patch_bytes, stats.requests,
    )  # fmt: skip
    return stats


def _missing_run(chunks: list[Chunk], i: int, index: ChunkIndex, max_request: int, *, patches: bool) -> int:
    j, size = i + 1, chunks[i].length
    while j < len(chunks) and size + chunks[j].length <= max_request and not index.has(chunks[j].sha256):
        if patches and patchable(chunks[j], index):
            break
        size += chunks[j].length
        j += 1
    return j


def _patched(
    chunk: Chunk, index: ChunkIndex, fetch_patch: FetchPatch | None, stats: RebuildStats
) -> bytes | None:
    """The chunk rebuilt from a local base and a fetched patch, or None (no patch, no base, or a
    patch kind this agent cannot apply).

    Raises:
        IntegrityError: the patch or the rebuilt chunk does not match the signed manifest.
    """
    if fetch_patch is None or not chunk.base or not chunk_patch.supported(chunk.patch_kind):
        return None
    base = index.read(chunk.base)
    if base is None:
        return None
    if chunk.patch_inline:
        patch = chunk.patch_inline  # signed as part of the manifest
    else:
        patch = fetch_patch(chunk)
        stats.requests += 1
        stats.patch_bytes += len(patch)
        if len(patch) != chunk.patch_length or hashlib.sha256(patch).hexdigest() != chunk.patch_sha256:
            raise IntegrityError(f"patch for chunk at {chunk.offset} does not match the manifest")
    try:
        data = chunk_patch.apply(chunk.patch_kind, base, patch, chunk.length)
    except chunk_patch.PatchError as err:
        raise IntegrityError(f"patch for chunk at {chunk.offset} refused: {err}") from err
    if hashlib.sha256(data).hexdigest() != chunk.sha256:
        raise IntegrityError(f"patched chunk at {chunk.offset} does not match the manifest")
    stats.patched_chunks += 1
    return data


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
