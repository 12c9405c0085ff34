"""The device's half of the secure-aggregation crypto (numpy + `cryptography` only).

- MAC of the masked upload (protocol version 2): Poly1305 under a one-time key
  HMAC-SHA256(mac key, label || random 16-byte nonce); tag = nonce || Poly1305 tag.
- Shamir t-of-n sharing of 32-byte secrets over GF(2^521 - 1); sealing of shares
  (ChaCha20-Poly1305).
- Fixed point: values in [-clip, clip] times `scale`, rounded to the nearest integer, mod 2^32.

The primitives both ends compute identically (X25519 + HKDF key agreement, the ChaCha20 mask PRG
and its in-place application, the MAC's one-time key and header) are in protos/edgeloop/secagg.py
and re-exported here; the server's inverses are in fleet_server/federated/secagg_crypto.py.
"""

from __future__ import annotations

import os
import secrets

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.poly1305 import Poly1305

from protos.edgeloop.secagg import (
    PRIME,
    SHARE_BYTES,
    VERSION,
    _octets,
    agree,
    apply_masks,
    keypair,
    mac_header,
    one_time_key,
    prg,
)

__all__ = [
    "SHARE_BYTES", "VERSION", "agree", "apply_masks", "encode_fixed", "keypair", "mac", "open_sealed", "prg",
    "seal", "shamir_split",
]  # fmt: skip


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


def mac(key: bytes, round_id: str, index: int, payload: np.ndarray | bytes) -> bytes:
    """nonce || Poly1305 tag over the round, this device's index and the masked vector.

    The one-time Poly1305 key comes from a fresh random nonce, so a repeated upload in the same
    round never reuses a key.
    """
    nonce = os.urandom(16)
    poly = Poly1305(one_time_key(key, nonce))
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
