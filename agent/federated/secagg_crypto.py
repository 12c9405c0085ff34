"""Cryptographic pieces of secure aggregation on the device (numpy + `cryptography` only).

- Key agreement: X25519, then HKDF-SHA256 with a purpose label, so one exchange never yields the
  same key for two uses (share encryption, pairwise masks, the result MAC).
- PRG: the ChaCha20 keystream under the derived 32-byte key (a cryptographic PRG; Flower's own
  mask generator is numpy RandomState seeded with 32 bits and is not one, flwrlabs/flower#7522).
- Shamir t-of-n sharing of 32-byte secrets over GF(2^521 - 1).
- Fixed point: values in [-clip, clip] times `scale`, rounded to the nearest integer, mod 2^32.

The server has its own copy of the inverse operations (agent and server share only protos).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PRIME = 2**521 - 1
SHARE_BYTES = 66


def keypair() -> tuple[X25519PrivateKey, bytes]:
    sk = X25519PrivateKey.generate()
    return sk, sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def agree(sk: X25519PrivateKey, peer_pk: bytes, purpose: bytes) -> bytes:
    shared = sk.exchange(X25519PublicKey.from_public_bytes(peer_pk))
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"edgeloop-secagg/" + purpose).derive(
        shared
    )


def prg(seed: bytes, length: int) -> np.ndarray:
    """`length` uint32 words of ChaCha20 keystream under `seed` (32 bytes)."""
    enc = Cipher(algorithms.ChaCha20(seed, b"\0" * 16), mode=None).encryptor()
    return np.frombuffer(enc.update(b"\0" * (4 * length)), dtype="<u4").astype(np.uint32)


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


def mac(key: bytes, round_id: str, index: int, payload: bytes) -> bytes:
    msg = round_id.encode() + index.to_bytes(4, "big") + hashlib.sha256(payload).digest()
    return hmac.new(key, msg, hashlib.sha256).digest()


def encode_fixed(values: np.ndarray, *, clip: float, scale: float) -> np.ndarray:
    """Clip to [-clip, clip], scale, round to nearest, two's complement mod 2^32."""
    q = np.rint(np.clip(values, -clip, clip) * scale).astype(np.int64)
    out: np.ndarray = (q & 0xFFFFFFFF).astype(np.uint32)
    return out
