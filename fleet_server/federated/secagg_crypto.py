"""Server-side inverses of the device's secure-aggregation crypto (agent/federated/secagg_crypto.py).

Same constructions, duplicated on purpose (agent and server share only protos): X25519 + HKDF
key agreement, ChaCha20 keystream PRG, Shamir recovery over GF(2^521 - 1), the MAC check of the
masked upload, fixed-point decoding from two's complement mod 2^32.

Protocol version 2 (`VERSION`): the masked upload's MAC is Poly1305 under a one-time key
HMAC-SHA256(mac key, label || 16-byte nonce) over the round id, the device index and the vector,
tag = nonce || Poly1305 tag (version 1 hashed the 4 MB vector with SHA-256 inside an HMAC:
3-4x slower). The mask PRG is unchanged from version 1. Masks are expanded in cache-sized
blocks straight into a reused buffer and added in place (`apply_masks`): no 4 MB temporaries.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

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
    """`length` uint32 words of ChaCha20 keystream under `seed` (a new array; see `apply_masks`)."""
    out = np.empty(length, np.uint32)
    _keystream(seed).update_into(bytes(out.nbytes), out.data.cast("B"))
    return out


def apply_masks(
    vec: np.ndarray, masks: Sequence[tuple[bytes, bool]], *, plus: Sequence[np.ndarray] = ()
) -> None:
    """In place, mod 2^32: `vec += sum(plus)`, then `vec += PRG(seed)` for `(seed, True)` and
    `vec -= PRG(seed)` for `(seed, False)`.

    Equal to adding each `prg(seed, len(vec))` in turn; the work runs block by block (the
    keystreams into one reused buffer) so each block of `vec` is updated while it is in cache.
    """
    if vec.dtype != np.uint32 or vec.ndim != 1 or not vec.flags.c_contiguous:
        raise ValueError("apply_masks needs a contiguous 1-d uint32 vector")
    if any(v.shape != vec.shape for v in plus):
        raise ValueError("apply_masks: every vector in `plus` must have the shape of `vec`")
    streams = [(_keystream(seed), add) for seed, add in masks]
    size = min(len(vec), BLOCK_WORDS)
    block = np.empty(size, np.uint32)
    zeros = memoryview(bytes(block.nbytes))
    for start in range(0, len(vec), BLOCK_WORDS):
        part = vec[start : start + BLOCK_WORDS]
        for v in plus:
            np.add(part, v[start : start + BLOCK_WORDS], out=part)
        ks = block[: len(part)]
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


def mac_ok(key: bytes, round_id: str, index: int, payload: np.ndarray | bytes, tag: bytes) -> bool:
    """Check the device's tag (nonce || Poly1305) over the round, its index and the masked vector."""
    if len(tag) != MAC_BYTES:
        return False
    one_time = hmac.new(key, MAC_LABEL + tag[:16], hashlib.sha256).digest()
    poly = Poly1305(one_time)
    poly.update(mac_header(round_id, index))
    poly.update(_octets(payload))
    try:
        poly.verify(tag[16:])
    except InvalidSignature:
        return False
    return True


def decode_fixed(total: np.ndarray, *, scale: float) -> np.ndarray:
    """uint32 sum (two's complement) -> float64 / scale."""
    out = total.astype(np.uint32, copy=False).view(np.int32).astype(np.float64)
    out /= scale
    return out
