"""Chunk patches: a changed chunk sent as a small patch against the same tensor of the release the
device most likely holds (the previous release of the same model).

For each chunk of the new layout that the previous release does not contain, its partner in the
previous release is found by key (the tensor it holds; for glue, its place after a tensor), not by
offset, so a tensor that moved still pairs. `chunk_patch.make` then tries XOR, per-byte SUB and a
bsdiff4 diff, each under raw LZMA2, raw deflate and bzip2, and the smallest is kept when it is
below `MAX_RATIO` of the chunk. Patches up to `INLINE_MAX` bytes ride inside the manifest; larger
ones are files named ``<base sha256>-<chunk sha256>.p2`` (the manifest signs their length and
sha256). A device without the base chunk fetches the raw bytes as before.
Server-only; the agent applies patches with the same `protos.edgeloop.chunk_patch`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from fleet_server.ota.chunking import Layout
from protos.edgeloop import chunk_patch
from protos.edgeloop.chunk_manifest import PatchRef, patch_file_name

MAX_RATIO = 0.8
INLINE_MAX = 512  # a patch this small rides inside the signed manifest (no digest, no request)
INLINE_BUDGET = 4096  # per manifest: what a device without the base downloads for nothing


def pairing_keys(layout: Layout) -> list[str]:
    """A key per chunk that names the same content in another release: the tensor it starts with,
    or for glue ``after:<tensor>#k`` (the k-th glue chunk after that tensor)."""
    keys: list[str] = []
    anchor, k = "", 0
    for c in layout.chunks:
        if c.key:
            anchor, k = c.key, 0
            keys.append(c.key)
        else:
            keys.append(f"after:{anchor}#{k}")
            k += 1
    return keys


def add_patches(new: Layout, new_path: Path, base: Layout, base_path: Path, out: Path) -> dict[int, PatchRef]:
    """Patches for the chunks of `new` that `base` lacks, written under `out`; chunk index -> ref."""
    held = {c.sha256 for c in base.chunks}
    partners = dict(zip(pairing_keys(base), base.chunks, strict=True))
    refs: dict[int, PatchRef] = {}
    inline = 0
    with new_path.open("rb") as fnew, base_path.open("rb") as fbase:
        for i, (key, chunk) in enumerate(zip(pairing_keys(new), new.chunks, strict=True)):
            partner = partners.get(key)
            if chunk.sha256 in held or partner is None:
                continue
            fnew.seek(chunk.offset)
            fbase.seek(partner.offset)
            made = chunk_patch.make(fbase.read(partner.length), fnew.read(chunk.length))
            if made is None or len(made[1]) >= MAX_RATIO * chunk.length:
                continue
            kind, payload = made
            if len(payload) <= INLINE_MAX and inline + len(payload) <= INLINE_BUDGET:
                inline += len(payload)
                refs[i] = PatchRef(kind, partner.sha256, len(payload), b"", payload)
                continue
            _write(out / patch_file_name(partner.sha256, chunk.sha256), payload)
            refs[i] = PatchRef(kind, partner.sha256, len(payload), hashlib.sha256(payload).digest())
    return refs


def _write(path: Path, payload: bytes) -> None:
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)
