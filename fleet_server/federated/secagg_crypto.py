"""The server's half of the secure-aggregation crypto: Shamir recovery over GF(2^521 - 1), the MAC
check of the masked upload (fused with the running sum), fixed-point decoding from two's
complement mod 2^32. The primitives both ends compute identically (key agreement, the mask PRG and
its application, the MAC's one-time key) are in protos/edgeloop/secagg.py and re-exported here.

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

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.poly1305 import Poly1305

from protos.edgeloop.secagg import (
    BLOCK_WORDS,
    CHACHA_BLOCK_WORDS,
    MAC_BYTES,
    PRIME,
    VERSION,
    _keystream,
    _octets,
    _spans,
    agree,
    apply_masks,
    keypair,
    mac_header,
    mask_threads,
    one_time_key,
    prg,
)

__all__ = [
    "BLOCK_WORDS", "CHACHA_BLOCK_WORDS", "MAC_BYTES", "VERSION", "_keystream", "_spans", "add_if_authentic",
    "agree", "apply_masks", "decode_fixed", "keypair", "mac_ok", "mask_threads", "prg", "shamir_combine",
]  # fmt: skip


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


def _poly(key: bytes, tag: bytes, round_id: str, index: int) -> Poly1305:
    poly = Poly1305(one_time_key(key, tag[:16]))
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
