"""Tensor patches: a changed chunk sent as lzma(new XOR old) against the same chunk of the release
the device most likely holds (the previous release of the same model).

A fine-tune rewrites whole tensors but moves each value a little, so most XORed bytes are zero and
compress well. For each chunk of the new manifest that the previous release does not contain, at the
same position and with the same length, a patch file ``patches/<base>-<new>.xz`` is written when it
is smaller than `MAX_RATIO` of the chunk, and the manifest entry grows to
``[offset, length, sha256, base_sha256, patch_length, patch_sha256]``. The manifest is signed, so the
agent verifies the patch bytes, then the rebuilt chunk; a device without the base chunk fetches the
raw bytes as before. Pairs by position only when both manifests have the same number of chunks.
"""

from __future__ import annotations

import hashlib
import lzma
import os
from pathlib import Path
from typing import Any

import numpy as np

MAX_RATIO = 0.8


def add_patches(
    manifest: dict[str, Any], new: Path, base_manifest: dict[str, Any], base: Path, out: Path
) -> int:
    """Extend `manifest` in place with patches against `base`; returns the number of patches written."""
    chunks, base_chunks = manifest["chunks"], base_manifest["chunks"]
    if len(chunks) != len(base_chunks):
        return 0
    held = {c[2] for c in base_chunks}
    written = 0
    with new.open("rb") as fnew, base.open("rb") as fbase:
        for entry, (bo, bn, bh) in zip(chunks, base_chunks, strict=True):
            offset, length, sha = entry[:3]
            if sha in held or length != bn:
                continue
            fnew.seek(offset)
            fbase.seek(bo)
            xor = np.bitwise_xor(
                np.frombuffer(fnew.read(length), np.uint8), np.frombuffer(fbase.read(bn), np.uint8)
            )
            patch = lzma.compress(xor.tobytes(), preset=6)
            if len(patch) >= MAX_RATIO * length:
                continue
            path = out / f"{bh}-{sha}.xz"
            if not path.exists():
                out.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_bytes(patch)
                os.replace(tmp, path)
            entry[3:] = [bh, len(patch), hashlib.sha256(patch).hexdigest()]
            written += 1
    return written
