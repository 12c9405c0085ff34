"""Per-chunk patch codecs of the delta contract: the server makes them, the agent applies them.

A patch rebuilds one chunk of a new release from one chunk the device already holds (its *base*).
Its kind byte is ``transform << 4 | codec``:

- transforms: `XOR` (new = base ^ d, same length: float tensors nudged by a fine-tune keep sign
  and exponent bytes), `SUB` (new = base + d mod 256 per byte, same length: int8 tensors move by
  a few steps), `BSDIFF` (bsdiff4's own suffix-sorting diff, ``bsdiff4.core``: control, diff and
  extra blocks; any lengths, bytes that moved);
- codecs of the transformed bytes: `LZMA2` (raw LZMA2, no xz container: ~60 bytes less per
  patch, which is most of a small model's patch), `DEFLATE` (raw deflate) and `BZIP2` (both
  smaller than LZMA2 on a few hundred changed bytes); `XZ` (an xz container, XOR only) is
  format 1's, read for older releases.

`make` tries every transform and codec (bsdiff only up to `BSDIFF_MAX` bytes: its suffix sort
costs seconds per MiB; above 256 KiB only LZMA2, chosen on a sample) and keeps the smallest.
`apply` checks sizes before it decompresses or calls bsdiff4's C code, and never produces more
than the chunk's length. bsdiff4 is a small C wheel in the `agent` and `server` extras; without it
`supported` says no to BSDIFF kinds and the agent fetches those chunks whole. Pure and
deterministic (the same bytes give the same patch).
"""

from __future__ import annotations

import bz2
import lzma
import zlib

import numpy as np

from protos.edgeloop.chunk_manifest import ByteReader, ManifestError, put_varint

XOR, SUB, BSDIFF = 1, 2, 3
LZMA2, DEFLATE, BZIP2, XZ = 1, 2, 3, 15
LEGACY_XOR_XZ = XOR << 4 | XZ
BSDIFF_MAX = 1 << 20
_DICT = 4 << 20  # the decoder allocates this much: one chunk (matches reach back at most this far)
LZMA2_FILTERS: list[dict[str, int]] = [{"id": lzma.FILTER_LZMA2, "dict_size": _DICT}]
# Encoder settings tried per chunk (the decoder reads lc/lp/pb from the stream).
_PRESET = 9 | lzma.PRESET_EXTREME
_LZMA2_TRIES: list[list[dict[str, int]]] = [
    [{"id": lzma.FILTER_LZMA2, "preset": _PRESET, "dict_size": _DICT}],
    [{"id": lzma.FILTER_LZMA2, "preset": _PRESET, "dict_size": _DICT, "lc": 0, "lp": 0, "pb": 0}],
]
_BIG = 1 << 18  # above this: LZMA2 only, with the transform and settings chosen on a sample
_SAMPLE = 1 << 16


class PatchError(ManifestError):
    """A patch that does not decode to the chunk it claims (corrupt or for another base)."""


def kind_name(kind: int) -> str:
    transform = {XOR: "xor", SUB: "sub", BSDIFF: "bsdiff"}.get(kind >> 4, "?")
    codec = {LZMA2: "lzma2", DEFLATE: "deflate", BZIP2: "bzip2", XZ: "xz"}.get(kind & 15, "?")
    return f"{transform}+{codec}"


def supported(kind: int) -> bool:
    """Whether `apply` can run this kind here (BSDIFF needs bsdiff4)."""
    transform, codec = kind >> 4, kind & 15
    if codec not in (LZMA2, DEFLATE, BZIP2) and kind != LEGACY_XOR_XZ:
        return False
    if transform == BSDIFF:
        try:
            import bsdiff4.core  # noqa: F401
        except ImportError:
            return False
        return True
    return transform in (XOR, SUB)


# ------------------------------------------------------------------ apply (agent)


def apply(kind: int, base: bytes, payload: bytes, length: int) -> bytes:
    """The chunk of `length` bytes rebuilt from `base` and `payload`.

    Raises:
        PatchError: unknown kind, undecodable payload, or the wrong size.
    """
    transform = kind >> 4
    if not supported(kind):
        raise PatchError(f"patch kind {kind_name(kind)} ({kind:#x}) is not supported here")
    if transform in (XOR, SUB):
        if len(base) != length:
            raise PatchError("base chunk has another length")
        raw = _decompress(kind & 15, payload, length, exact=True)
        d, b = np.frombuffer(raw, np.uint8), np.frombuffer(base, np.uint8)
        out = b ^ d if transform == XOR else b + d
        del d, raw  # peak: base, the diff and the result, one chunk each
        return out.tobytes()
    raw = _decompress(kind & 15, payload, 25 * (length + 1) + 20, exact=False)
    return _bspatch(base, raw, length)


def _bspatch(base: bytes, raw: bytes, length: int) -> bytes:
    import bsdiff4.core

    try:
        r = ByteReader(raw)
        n_ctrl, n_diff = r.varint(), r.varint()
        ctrl, diff, extra = r.take(n_ctrl), r.take(n_diff), raw[r.pos :]
    except ManifestError as err:
        raise PatchError(f"bsdiff patch header: {err}") from err
    if n_ctrl % 24 or n_diff + len(extra) != length:
        raise PatchError("bsdiff patch blocks do not add up to the chunk")
    try:
        out: bytes = bsdiff4.core.patch(base, length, ctrl, diff, extra)
    except (ValueError, MemoryError) as err:
        raise PatchError(f"bsdiff patch refused: {err}") from err
    if len(out) != length:
        raise PatchError("bsdiff patch produced the wrong size")
    return out


def _decompress(codec: int, payload: bytes, limit: int, *, exact: bool) -> bytes:
    try:
        if codec == DEFLATE:
            d = zlib.decompressobj(-15)
            out = d.decompress(payload, limit)
            done = d.eof and not d.unconsumed_tail and not d.unused_data
        elif codec == BZIP2:
            b = bz2.BZ2Decompressor()
            out = b.decompress(payload, max_length=limit)
            done = b.eof and not b.unused_data
        else:
            dec = (
                lzma.LZMADecompressor()
                if codec == XZ
                else lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=LZMA2_FILTERS)
            )
            out = dec.decompress(payload, max_length=limit)
            done = dec.eof and not dec.unused_data
    except (lzma.LZMAError, zlib.error, OSError, EOFError) as err:
        raise PatchError(f"patch does not decompress: {err}") from err
    if not done or (exact and len(out) != limit):
        raise PatchError("patch decompresses to the wrong size")
    return out


# ------------------------------------------------------------------ make (server)


def make(base: bytes, new: bytes) -> tuple[int, bytes] | None:
    """The smallest (kind, payload) rebuilding `new` from `base`, or None (nothing applies).

    Above `_BIG` bytes the transform and LZMA2 settings are chosen on a 64 KiB sample and only
    that one is run on the whole chunk (a full LZMA2 pass costs seconds per MiB of tensor)."""
    streams: list[tuple[int, bytes]] = []
    if len(base) == len(new):
        a, b = np.frombuffer(base, np.uint8), np.frombuffer(new, np.uint8)
        streams += [(XOR, (a ^ b).tobytes()), (SUB, (b - a).tobytes())]
    if len(new) <= BSDIFF_MAX and len(base) <= BSDIFF_MAX:
        streams.append((BSDIFF, _bsdiff(base, new)))
    if len(new) > _BIG:
        return _make_large(streams)
    best: tuple[int, bytes] | None = None
    for transform, data in streams:
        for codec, payload in _encodings(data):
            if best is None or len(payload) < len(best[1]):
                best = (transform << 4 | codec, payload)
    return best


def _make_large(streams: list[tuple[int, bytes]]) -> tuple[int, bytes] | None:
    sampled = [
        (len(lzma.compress(data[:_SAMPLE], format=lzma.FORMAT_RAW, filters=f)), transform, data, f)
        for transform, data in streams
        for f in _LZMA2_TRIES
    ]
    if not sampled:
        return None
    size, transform, data, filters = min(sampled, key=lambda x: x[0])
    if size > 0.9 * min(_SAMPLE, len(data)):
        return None  # does not compress: the raw chunk is as good
    return transform << 4 | LZMA2, lzma.compress(data, format=lzma.FORMAT_RAW, filters=filters)


def _bsdiff(base: bytes, new: bytes) -> bytes:
    import bsdiff4.core

    ctrl, diff, extra = bsdiff4.core.diff(base, new)
    head = bytearray()
    put_varint(head, len(ctrl))
    put_varint(head, len(diff))
    return bytes(head) + ctrl + diff + extra


def _encodings(data: bytes) -> list[tuple[int, bytes]]:
    out = [(LZMA2, lzma.compress(data, format=lzma.FORMAT_RAW, filters=f)) for f in _LZMA2_TRIES]
    for strategy in (zlib.Z_DEFAULT_STRATEGY, zlib.Z_RLE):
        c = zlib.compressobj(9, zlib.DEFLATED, -15, 9, strategy)
        out.append((DEFLATE, c.compress(data) + c.flush()))
    out.append((BZIP2, bz2.compress(data, 9)))
    return out
