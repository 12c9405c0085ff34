"""Server-side inverses of the device's secure-aggregation crypto (agent/federated/secagg_crypto.py).

Same constructions, duplicated on purpose (agent and server share only protos): X25519 + HKDF
key agreement, ChaCha20 keystream PRG, Shamir recovery over GF(2^521 - 1), the MAC check of the
masked upload, fixed-point decoding from two's complement mod 2^32.

Protocol version 2 (`VERSION`): the masked upload's MAC is Poly1305 under a one-time key
HMAC-SHA256(mac key, label || 16-byte nonce) over the round id, the device index and the vector,
tag = nonce || Poly1305 tag (version 1 hashed the 4 MB vector with SHA-256 inside an HMAC:
3-4x slower). The mask PRG is unchanged from version 1.

Cost, server side: each upload is read once, its MAC computed and its words added to the running
sum block by block while the block is in cache (`add_if_authentic`); masks are expanded in
cache-sized blocks straight into a reused buffer and added in place (`apply_masks`: no 4 MB
temporaries), on several threads over disjoint coordinate ranges (ChaCha20 seeks by its block
counter; `cryptography` and numpy release the GIL for the expansion and the adds).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.poly1305 import Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PRIME = 2**521 - 1
VERSION = 2  # of the device <-> server SecAgg+ exchange; the agent refuses any other
NONCE = b"\0" * 16  # ChaCha20: 32-bit block counter 0 and a zero nonce (every seed is used once)
BLOCK_WORDS = 1 << 16  # 256 KiB of keystream per step: it stays in cache while it is added
MAC_LABEL = b"edgeloop-secagg/v2/poly1305"
MAC_BYTES = 32  # 16-byte nonce + 16-byte Poly1305 tag
CHACHA_BLOCK_WORDS = 16  # one 64-byte ChaCha20 block: a keystream can start at any multiple of it
MAX_MASK_THREADS = 4


def keypair() -> tuple[X25519PrivateKey, bytes]:
    sk = X25519PrivateKey.generate()
    return sk, sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def agree(sk: X25519PrivateKey, peer_pk: bytes, purpose: bytes) -> bytes:
    shared = sk.exchange(X25519PublicKey.from_public_bytes(peer_pk))
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"edgeloop-secagg/" + purpose).derive(
        shared
    )


def _keystream(seed: bytes, start_word: int = 0) -> CipherContext:
    """The PRG's keystream from word `start_word` on (a multiple of `CHACHA_BLOCK_WORDS`): the same
    bytes as skipping that many words of the stream from counter 0 (RFC 8439: the first 4 nonce
    bytes are the little-endian block counter)."""
    counter = start_word // CHACHA_BLOCK_WORDS
    return Cipher(algorithms.ChaCha20(seed, counter.to_bytes(4, "little") + NONCE[4:]), mode=None).encryptor()


def mask_threads() -> int:
    """Threads `apply_masks` uses by default on this host: one per usable core, at most 4."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(MAX_MASK_THREADS, usable or 1))


def prg(seed: bytes, length: int) -> np.ndarray:
    """`length` uint32 words of ChaCha20 keystream under `seed` (a new array; see `apply_masks`)."""
    out = np.empty(length, np.uint32)
    _keystream(seed).update_into(bytes(out.nbytes), out.data.cast("B"))
    return out


def apply_masks(
    vec: np.ndarray,
    masks: Sequence[tuple[bytes, bool]],
    *,
    plus: Sequence[np.ndarray] = (),
    threads: int = 1,
) -> None:
    """In place, mod 2^32: `vec += sum(plus)`, then `vec += PRG(seed)` for `(seed, True)` and
    `vec -= PRG(seed)` for `(seed, False)`.

    Equal to adding each `prg(seed, len(vec))` in turn; the work runs block by block (the
    keystreams into one reused buffer) so each block of `vec` is updated while it is in cache.
    With `threads` > 1, each thread takes a contiguous range of coordinates (at least one block)
    and starts every keystream at that range's first ChaCha20 block: same result, less wall time
    on a multi-core server (CPU time is unchanged).
    """
    if vec.dtype != np.uint32 or vec.ndim != 1 or not vec.flags.c_contiguous:
        raise ValueError("apply_masks needs a contiguous 1-d uint32 vector")
    if any(v.shape != vec.shape for v in plus):
        raise ValueError("apply_masks: every vector in `plus` must have the shape of `vec`")
    spans = _spans(len(vec), threads)
    if len(spans) == 1:
        _mask_span(vec, masks, plus, 0, len(vec))
        return
    with ThreadPoolExecutor(len(spans), thread_name_prefix="secagg-mask") as pool:
        for done in [pool.submit(_mask_span, vec, masks, plus, a, b) for a, b in spans]:
            done.result()


def _spans(length: int, threads: int) -> list[tuple[int, int]]:
    """`threads` contiguous ranges of [0, length) starting on ChaCha20 blocks, none below one
    `BLOCK_WORDS` step (fewer ranges for short vectors)."""
    n = max(1, min(threads, length // BLOCK_WORDS))
    step = -(-length // n)
    step = -(-step // CHACHA_BLOCK_WORDS) * CHACHA_BLOCK_WORDS
    return [(a, min(a + step, length)) for a in range(0, length, step)] or [(0, 0)]


def _mask_span(
    vec: np.ndarray, masks: Sequence[tuple[bytes, bool]], plus: Sequence[np.ndarray], lo: int, hi: int
) -> None:
    streams = [(_keystream(seed, lo), add) for seed, add in masks]
    block = np.empty(min(hi - lo, BLOCK_WORDS), np.uint32)
    zeros = memoryview(bytes(block.nbytes))
    for start in range(lo, hi, BLOCK_WORDS):
        end = min(start + BLOCK_WORDS, hi)
        part = vec[start:end]
        for v in plus:
            np.add(part, v[start:end], out=part)
        ks = block[: end - start]
        raw, src = ks.data.cast("B"), zeros[: ks.nbytes]
        for enc, add in streams:
            enc.update_into(src, raw)
            if add:
                np.add(part, ks, out=part)
            else:
                np.subtract(part, ks, out=part)


def shamir_combine(shares: list[bytes]) -> bytes:
    """Lagrange interpolation at 0 of (x: 2 bytes, y: 66 bytes) shares; returns 32 bytes."""
    points = [(int.from_bytes(s[:2], "big"), int.from_bytes(s[2:], "big")) for s in shares]
    secret = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num = num * (-xj) % PRIME
                den = den * (xi - xj) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    if secret >= 2**256:
        raise ValueError("shares do not interpolate to a 32-byte secret")
    return secret.to_bytes(32, "big")


def _octets(payload: np.ndarray | bytes) -> memoryview:
    if isinstance(payload, bytes):
        return memoryview(payload)
    return np.ascontiguousarray(payload).reshape(-1).view(np.uint8).data


def mac_header(round_id: str, index: int) -> bytes:
    rid = round_id.encode()
    return len(rid).to_bytes(2, "big") + rid + index.to_bytes(4, "big")


def _poly(key: bytes, tag: bytes, round_id: str, index: int) -> Poly1305:
    one_time = hmac.new(key, MAC_LABEL + tag[:16], hashlib.sha256).digest()
    poly = Poly1305(one_time)
    poly.update(mac_header(round_id, index))
    return poly


def _verified(poly: Poly1305, tag: bytes) -> bool:
    try:
        poly.verify(tag[16:])
    except InvalidSignature:
        return False
    return True


def mac_ok(key: bytes, round_id: str, index: int, payload: np.ndarray | bytes, tag: bytes) -> bool:
    """Check the device's tag (nonce || Poly1305) over the round, its index and the masked vector."""
    if len(tag) != MAC_BYTES:
        return False
    poly = _poly(key, tag, round_id, index)
    poly.update(_octets(payload))
    return _verified(poly, tag)


def add_if_authentic(
    total: np.ndarray, vec: np.ndarray, tag: bytes, *, key: bytes, round_id: str, index: int
) -> bool:
    """`total += vec` (mod 2^32) when `tag` authenticates `vec` exactly as `mac_ok` does; else
    `total` is left as it was and False is returned.

    One pass over the upload: each block is fed to Poly1305 and added to `total` while it is in
    cache (checking, then summing, reads the 4 MB twice). A vector whose tag fails is subtracted
    back out, which restores `total` exactly (arithmetic mod 2^32).
    """
    if total.dtype != np.uint32 or total.ndim != 1 or not total.flags.c_contiguous:
        raise ValueError("add_if_authentic needs a contiguous 1-d uint32 sum")
    if len(tag) != MAC_BYTES or vec.dtype != np.uint32 or vec.shape != total.shape:
        return False
    flat = np.ascontiguousarray(vec)
    poly = _poly(key, tag, round_id, index)
    for start in range(0, len(flat), BLOCK_WORDS):
        part = flat[start : start + BLOCK_WORDS]
        poly.update(part.view(np.uint8).data)
        np.add(total[start : start + BLOCK_WORDS], part, out=total[start : start + BLOCK_WORDS])
    if _verified(poly, tag):
        return True
    np.subtract(total, flat, out=total)
    return False


def decode_fixed(total: np.ndarray, *, scale: float) -> np.ndarray:
    """uint32 sum (two's complement) -> float64 / scale."""
    out = total.astype(np.uint32, copy=False).view(np.int32).astype(np.float64)
    out /= scale
    return out
