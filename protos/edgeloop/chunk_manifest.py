"""The chunk manifest of a release, in bytes both sides must agree on (ARCHITECTURE.md rule 1).

The fleet server encodes it (`fleet_server/ota/releases.py`, from `chunking.py` and `patches.py`);
the agent decodes it (`agent/ota/delta.py`). The manifest is a signed TUF target of the release, so
everything in it is trusted once its hash matched; `decode` still bounds every count and size so a
bug on the server cannot make the agent allocate without limit. Pure: bytes in, dataclasses out.
Does not own: how chunks are cut (server) or how a target is rebuilt from them (agent); the patch
codecs are in `chunk_patch.py`.

Format 2 (binary, every integer an unsigned LEB128 varint)::

    b"ELCM"  version=2  flags        (flags bit 0: the body is raw LZMA2, see chunk_patch.LZMA2_FILTERS)
    body:    length  layout  n  length_1 .. length_n  sha256_1 .. sha256_n (32 raw bytes each)
             p  p * (index delta, kind byte, base sha256 (32 B), patch length,
                     patch sha256 (32 B) | the patch itself when kind has bit 7 set)

Chunks tile ``[0, length)`` in order, so offsets are implied by the lengths. A patch entry rebuilds
chunk ``index`` (delta-coded from the previous entry's index) from the local chunk whose sha256 is
``base``; its bytes are the file `patch_file_name(base, chunk)` under the targets' ``patches/``, or,
for a patch of at most a few hundred bytes, inline in the manifest (signed with it: no digest and
no request of its own, which would cost more than the patch).
Format 1 (JSON, releases published before format 2) is decoded by the agent for models it already
holds and releases still in the repository; a version above `VERSION` is refused with
`UnsupportedManifestError`, which says which formats this side reads.
"""

from __future__ import annotations

import lzma
from dataclasses import dataclass

MAGIC = b"ELCM"
VERSION = 2
SUPPORTED = (1, 2)
FLAG_LZMA = 1
INLINE = 0x80  # kind bit: the patch bytes follow in the manifest
DIGEST = 32
MAX_CHUNKS = 1 << 20
MAX_BODY = 64 << 20  # decompressed; a 1 TB model in 4 MiB chunks needs ~10 MB

LAYOUT_OPAQUE, LAYOUT_ONNX, LAYOUT_TFLITE = 0, 1, 2
LAYOUT_NAMES = {LAYOUT_OPAQUE: "cdc", LAYOUT_ONNX: "onnx-tensors", LAYOUT_TFLITE: "tflite-buffers"}


class ManifestError(ValueError):
    """The bytes are not a well-formed chunk manifest."""


class UnsupportedManifestError(ManifestError):
    """A manifest format this side does not read (a newer server)."""


@dataclass(frozen=True, slots=True)
class PatchRef:
    kind: int  # chunk_patch kind byte: transform << 4 | codec
    base: bytes  # sha256 of the local chunk the patch applies to
    length: int
    sha256: bytes  # of the patch file (b"" when inline)
    inline: bytes = b""  # the patch itself, carried in the manifest


@dataclass(frozen=True, slots=True)
class ManifestChunk:
    length: int
    sha256: bytes
    patch: PatchRef | None = None


@dataclass(frozen=True, slots=True)
class ChunkManifest:
    length: int
    layout: int
    chunks: tuple[ManifestChunk, ...]


def patch_file_name(base: bytes, chunk: bytes) -> str:
    """The file name of a format-2 patch (format 1 used ``<base>-<chunk>.xz``)."""
    return f"{base.hex()}-{chunk.hex()}.p2"


# ------------------------------------------------------------------ varints


def put_varint(out: bytearray, value: int) -> None:
    if value < 0:
        raise ValueError("varints are unsigned")
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


class ByteReader:
    """Varints and byte runs read from a buffer; `ManifestError` when it runs short (also used by
    `chunk_patch` for patch headers)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def varint(self, limit: int = 1 << 62) -> int:
        value = shift = 0
        while True:
            if self.pos >= len(self.data) or shift > 63:
                raise ManifestError("truncated varint")
            byte = self.data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
        if value > limit:
            raise ManifestError(f"value {value} over the limit {limit}")
        return value

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ManifestError("truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out


# ------------------------------------------------------------------ encode / decode


def encode(manifest: ChunkManifest) -> bytes:
    """Format-2 bytes of `manifest`, body compressed when that is smaller (deterministic)."""
    body = bytearray()
    put_varint(body, manifest.length)
    put_varint(body, manifest.layout)
    put_varint(body, len(manifest.chunks))
    for c in manifest.chunks:
        put_varint(body, c.length)
    for c in manifest.chunks:
        if len(c.sha256) != DIGEST:
            raise ValueError("chunk digests are 32 raw bytes")
        body += c.sha256
    patched = [(i, c.patch) for i, c in enumerate(manifest.chunks) if c.patch is not None]
    put_varint(body, len(patched))
    last = 0
    for i, p in patched:
        put_varint(body, i - last)
        last = i
        body.append(p.kind | (INLINE if p.inline else 0))
        body += p.base
        put_varint(body, p.length)
        body += p.inline if p.inline else p.sha256
    packed = lzma.compress(bytes(body), format=lzma.FORMAT_RAW, filters=_filters())
    flags, payload = (FLAG_LZMA, packed) if len(packed) < len(body) else (0, bytes(body))
    head = bytearray(MAGIC)
    put_varint(head, VERSION)
    put_varint(head, flags)
    return bytes(head) + payload


def version_of(data: bytes) -> int:
    """1 for a JSON manifest, else the binary header's version.

    Raises:
        ManifestError: neither.
    """
    if data[:1] == b"{":
        return 1
    if data[:4] != MAGIC:
        raise ManifestError("not a chunk manifest (no ELCM header, not JSON)")
    return ByteReader(data[4:]).varint()


def decode(data: bytes) -> ChunkManifest:
    """The format-2 manifest in `data` (tiling is checked by the caller against the signed length).

    Raises:
        UnsupportedManifestError: another version.
        ManifestError: malformed.
    """
    version = version_of(data)
    if version != VERSION:
        raise UnsupportedManifestError(
            f"chunk manifest format {version} is not readable here (this side reads formats "
            f"{', '.join(map(str, SUPPORTED))}); update the agent to use deltas for this release"
        )
    head = ByteReader(data[4:])
    head.varint()
    flags = head.varint()
    body = data[4 + head.pos :]
    if flags & ~FLAG_LZMA:
        raise ManifestError(f"unknown manifest flags {flags}")
    if flags & FLAG_LZMA:
        dec = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_filters())
        try:
            body = dec.decompress(body, max_length=MAX_BODY)
        except lzma.LZMAError as err:
            raise ManifestError(f"manifest body is not LZMA2: {err}") from err
        if not dec.eof and len(body) >= MAX_BODY:
            raise ManifestError("manifest body too large")
    r = ByteReader(body)
    length = r.varint()
    layout = r.varint(limit=255)
    n = r.varint(limit=MAX_CHUNKS)
    lengths = [r.varint(limit=length) for _ in range(n)]
    digests = [r.take(DIGEST) for _ in range(n)]
    patches: dict[int, PatchRef] = {}
    index = 0
    for _ in range(r.varint(limit=n)):
        index += r.varint(limit=n)
        if index >= n or (index in patches):
            raise ManifestError("patch entry for no chunk, or two for one")
        kind = r.take(1)[0]
        base = r.take(DIGEST)
        plen = r.varint(limit=MAX_BODY)
        if kind & INLINE:
            patches[index] = PatchRef(kind & ~INLINE, base, plen, b"", r.take(plen))
        else:
            patches[index] = PatchRef(kind, base, plen, r.take(DIGEST))
    if r.pos != len(body):
        raise ManifestError("trailing bytes after the manifest")
    chunks = tuple(ManifestChunk(lengths[i], digests[i], patches.get(i)) for i in range(n))
    return ChunkManifest(length, layout, chunks)


def _filters() -> list[dict[str, int]]:
    from protos.edgeloop.chunk_patch import LZMA2_FILTERS

    return LZMA2_FILTERS
