"""Server-side inverses of the device's secure-aggregation crypto (agent/federated/secagg_crypto.py).

Same constructions, duplicated on purpose (agent and server share only protos): X25519 + HKDF
key agreement, ChaCha20 keystream PRG, Shamir recovery over GF(2^521 - 1), HMAC check of the
masked upload, fixed-point decoding from two's complement mod 2^32.
"""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PRIME = 2**521 - 1


def keypair() -> tuple[X25519PrivateKey, bytes]:
    sk = X25519PrivateKey.generate()
    return sk, sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def agree(sk: X25519PrivateKey, peer_pk: bytes, purpose: bytes) -> bytes:
    shared = sk.exchange(X25519PublicKey.from_public_bytes(peer_pk))
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"edgeloop-secagg/" + purpose).derive(
        shared
    )


def prg(seed: bytes, length: int) -> np.ndarray:
    enc = Cipher(algorithms.ChaCha20(seed, b"\0" * 16), mode=None).encryptor()
    return np.frombuffer(enc.update(b"\0" * (4 * length)), dtype="<u4").astype(np.uint32)


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


def mac_ok(key: bytes, round_id: str, index: int, payload: bytes, tag: bytes) -> bool:
    msg = round_id.encode() + index.to_bytes(4, "big") + hashlib.sha256(payload).digest()
    return hmac.compare_digest(hmac.new(key, msg, hashlib.sha256).digest(), tag)


def decode_fixed(total: np.ndarray, *, scale: float) -> np.ndarray:
    """uint32 sum (two's complement) -> float64 / scale."""
    out: np.ndarray = total.astype(np.uint32).view(np.int32).astype(np.float64) / scale
    return out
