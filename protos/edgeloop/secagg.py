"""Secure-aggregation primitives the device and the server must compute identically (SecAgg+).

Owns the constructions both ends share, so they cannot drift apart: X25519 + HKDF key agreement
with a purpose label (one exchange never yields the same key for two uses), the mask PRG (the
ChaCha20 keystream under a derived 32-byte key, RFC 8439; a cryptographic PRG, unlike Flower's
32-bit-seeded numpy generator, flwrlabs/flower#7522) and its in-place block-wise application
(`apply_masks`, optionally on threads over disjoint coordinate ranges: ChaCha20 seeks by its block
counter), and the upload MAC's one-time key and header (protocol version 2: Poly1305 under
HMAC-SHA256(mac key, label || 16-byte nonce), tag = nonce || Poly1305 tag).

Does not own either side's half of the protocol: the device's sharing, sealing, tagging and
fixed-point encoding (agent/federated/secagg_crypto.py) or the server's recovery, tag check and
decoding (fleet_server/federated/secagg_crypto.py). numpy + `cryptography` only.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PRIME = 2**521 - 1  # Shamir shares live in GF(PRIME)
SHARE_BYTES = 66  # one share's y coordinate
VERSION = 2  # of the device <-> server SecAgg+ exchange (v2: Poly1305 upload MAC; same masks as v1)
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


def _octets(payload: np.ndarray | bytes) -> memoryview:
    if isinstance(payload, bytes):
        return memoryview(payload)
    return np.ascontiguousarray(payload).reshape(-1).view(np.uint8).data


def mac_header(round_id: str, index: int) -> bytes:
    rid = round_id.encode()
    return len(rid).to_bytes(2, "big") + rid + index.to_bytes(4, "big")


def one_time_key(key: bytes, nonce: bytes) -> bytes:
    """The Poly1305 key of one tag: HMAC-SHA256(mac key, label || the tag's 16-byte nonce)."""
    return hmac.new(key, MAC_LABEL + nonce, hashlib.sha256).digest()
