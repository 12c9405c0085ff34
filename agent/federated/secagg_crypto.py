"""Cryptographic pieces of secure aggregation on the device (numpy + `cryptography` only).

- Key agreement: X25519, then HKDF-SHA256 with a purpose label, so one exchange never yields the
  same key for two uses (share encryption, pairwise masks, the result MAC).
- PRG: the ChaCha20 keystream under the derived 32-byte key (a cryptographic PRG; Flower's own
  mask generator is numpy RandomState seeded with 32 bits and is not one, flwrlabs/flower#7522),
  expanded in cache-sized blocks into one reused buffer and added in place (`apply_masks`).
- MAC of the masked upload (protocol version 2): Poly1305 under a one-time key
  HMAC-SHA256(mac key, label || random 16-byte nonce); tag = nonce || Poly1305 tag.
- Shamir t-of-n sharing of 32-byte secrets over GF(2^521 - 1).
- Fixed point: values in [-clip, clip] times `scale`, rounded to the nearest integer, mod 2^32.

The server has its own copy of the inverse operations (agent and server share only protos).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.poly1305 import Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PRIME = 2**521 - 1
SHARE_BYTES = 66
VERSION = 2  # of the device <-> server SecAgg+ exchange (v2: Poly1305 upload MAC; same masks as v1)
NONCE = b"\0" * 16  # ChaCha20: 32-bit block counter 0 and a zero nonce (every seed is used once)
BLOCK_WORDS = 1 << 16  # 256 KiB of keystream per step: it stays in cache while it is added
MAC_LABEL = b"edgeloop-secagg/v2/poly1305"


def keypair() -> tuple[X25519PrivateKey, bytes]:
    sk = X25519PrivateKey.generate()
    return sk, sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def agree(sk: X25519PrivateKey, peer_pk: bytes, purpose: bytes) -> bytes:
    shared = sk.exchange(X25519PublicKey.from_public_bytes(peer_pk))
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"edgeloop-secagg/" + purpose).derive(
        shared
    )


def _keystream(seed: bytes) -> CipherContext:
    return Cipher(algorithms.ChaCha20(seed, NONCE), mode=None).encryptor()


def prg(seed: bytes, length: int) -> np.ndarray:
    """`length` uint32 words of ChaCha20 keystream under `seed` (32 bytes), as a new array."""
    out = np.empty(length, np.uint32)
    _keystream(seed).update_into(bytes(out.nbytes), out.data.cast("B"))
    return out


def apply_masks(vec: np.ndarray, masks: Sequence[tuple[bytes, bool]]) -> None:
    """In place, mod 2^32: `vec += PRG(seed)` for `(seed, True)`, `vec -= PRG(seed)` for `(seed, False)`.

    Equal to adding each `prg(seed, len(vec))` in turn, without a 4-byte-per-word temporary per mask.
    """
    if vec.dtype != np.uint32 or vec.ndim != 1 or not vec.flags.c_contiguous:
        raise ValueError("apply_masks needs a contiguous 1-d uint32 vector")
    streams = [(_keystream(seed), add) for seed, add in masks]
    block = np.empty(min(len(vec), BLOCK_WORDS), np.uint32)
    zeros = memoryview(bytes(block.nbytes))
    for start in range(0, len(vec), BLOCK_WORDS):
        part = vec[start : start + BLOCK_WORDS]
        ks = block[: len(part)]
        raw, src = ks.data.cast("B"), zeros[: ks.nbytes]
        for enc, add in streams:
            enc.update_into(src, raw)
            if add:
                np.add(part, ks, out=part)
            else:
                np.subtract(part, ks, out=part)


def shamir_split(secret: bytes, n: int, t: int) -> list[bytes]:
    """n shares (x = 1..n) of which any t recover `secret`."""
    coeffs = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(t - 1)]
    shares = []
    for x in range(1, n + 1):
        y = 0
        for c in reversed(coeffs):
            y = (y * x + c) % PRIME
        shares.append(x.to_bytes(2, "big") + y.to_bytes(SHARE_BYTES, "big"))
    return shares


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(12)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, blob: bytes, aad: bytes) -> bytes:
    """Raises: cryptography.exceptions.InvalidTag when the blob was altered."""
    return ChaCha20Poly1305(key).decrypt(blob[:12], blob[12:], aad)


def _octets(payload: np.ndarray | bytes) -> memoryview:
    if isinstance(payload, bytes):
        return memoryview(payload)
    return np.ascontiguousarray(payload).reshape(-1).view(np.uint8).data


def mac_header(round_id: str, index: int) -> bytes:
    rid = round_id.encode()
    return len(rid).to_bytes(2, "big") + rid + index.to_bytes(4, "big")


def mac(key: bytes, round_id: str, index: int, payload: np.ndarray | bytes) -> bytes:
    """nonce || Poly1305 tag over the round, this device's index and the masked vector.

    The one-time Poly1305 key comes from a fresh random nonce, so a repeated upload in the same
    round never reuses a key.
    """
    nonce = os.urandom(16)
    poly = Poly1305(hmac.new(key, MAC_LABEL + nonce, hashlib.sha256).digest())
    poly.update(mac_header(round_id, index))
    poly.update(_octets(payload))
    return nonce + poly.finalize()


def encode_fixed(
    values: np.ndarray, *, clip: float, scale: float, out: np.ndarray | None = None
) -> np.ndarray:
    """Clip to [-clip, clip], scale, round to nearest, two's complement mod 2^32.

    `values` (float64) is used as scratch and overwritten; `out` (uint32, same length) receives the
    result when given.
    """
    np.clip(values, -clip, clip, out=values)
    values *= scale
    np.rint(values, out=values)
    words = values.astype(np.int64).astype(np.uint32)  # |q| < 2^31: the low 32 bits, two's complement
    if out is None:
        return words
    out[...] = words
    return out
