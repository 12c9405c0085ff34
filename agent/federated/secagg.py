"""Device side of SecAgg+ (Bell et al. 2020): four stages, one in-memory session per round.

Stages (task kinds): `secagg.keys` -> two X25519 public keys; `secagg.share` -> Shamir shares of
the mask key and the self-mask seed, encrypted to each neighbour; `secagg.masked` -> train, then
upload the fixed-point update masked with the self mask and the pairwise masks; `secagg.unmask`
-> reveal, per neighbour, the self-mask share if it survived or the mask-key share if it
dropped, never both (a server asking for both, or naming fewer survivors than the threshold,
is refused). The masked upload carries a MAC under a key agreed with the server's round key, so a
tampered or replayed upload is detectable. Private keys never leave this object.

Protocol version (`secagg_crypto.VERSION`): the keys reply says which version this device speaks
(`v`), and the server's roster must name the same one, or the device refuses the round with
an error that says both versions (a server of another version gets the same from its side).
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent.errors import IntegrityError, InvalidInputError
from agent.federated import secagg_crypto as sc

logger = logging.getLogger(__name__)

# (delta arrays, num_examples, metrics) for the global model carried by the masked-stage task
TrainDelta = Callable[[], tuple[list[np.ndarray], int, dict[str, float]]]


@dataclass
class _Session:
    c_sk: X25519PrivateKey
    s_sk: X25519PrivateKey
    c_pk: bytes
    s_pk: bytes
    seed: bytes
    index: int = -1
    threshold: int = 0
    server_pk: bytes = b""
    neighbours: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    held: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # src -> (b share, s share)
    revealed: bool = False


class SecAggClient:
    """Answers the four SecAgg+ stages; `sessions` is keyed by round id."""

    def __init__(self) -> None:
        self.sessions: dict[str, _Session] = {}

    def keys(self, round_id: str) -> dict[str, bytes]:
        c_sk, c_pk = sc.keypair()
        s_sk, s_pk = sc.keypair()
        self.sessions = {round_id: _Session(c_sk, s_sk, c_pk, s_pk, secrets.token_bytes(32))}
        return {"c_pk": c_pk, "s_pk": s_pk, "v": str(sc.VERSION).encode()}

    def share(self, round_id: str, roster_blob: bytes) -> dict[str, bytes]:
        s = self._session(round_id)
        roster = json.loads(roster_blob)
        if not isinstance(roster, dict):
            raise InvalidInputError("secagg roster is not a JSON object")
        if roster.get("v") != sc.VERSION:
            raise InvalidInputError(
                f"secagg protocol version {roster.get('v', 1)} asked by the server; this agent"
                f" speaks version {sc.VERSION}: update the fleet server or the agent so they match"
            )
        s.index, s.threshold, s.server_pk = (
            int(roster["me"]),
            int(roster["t"]),
            bytes.fromhex(roster["server_pk"]),
        )
        s.neighbours = {
            int(k): (bytes.fromhex(v[0]), bytes.fromhex(v[1])) for k, v in roster["neighbours"].items()
        }
        if not 1 < s.threshold <= len(s.neighbours) or s.index in s.neighbours:
            raise InvalidInputError("secagg roster: bad threshold or neighbour set")
        order = sorted(s.neighbours)
        s_raw = s.s_sk.private_bytes_raw()
        b_shares = sc.shamir_split(s.seed, len(order), s.threshold)
        k_shares = sc.shamir_split(s_raw, len(order), s.threshold)
        out = {}
        for dst, bsh, ksh in zip(order, b_shares, k_shares, strict=True):
            key = sc.agree(s.c_sk, s.neighbours[dst][0], b"share")
            plain = s.index.to_bytes(4, "big") + dst.to_bytes(4, "big") + bsh + ksh
            out[str(dst)] = sc.seal(key, plain, round_id.encode()).hex()
        return {"shares": json.dumps(out).encode()}

    def masked(
        self,
        round_id: str,
        inbox_blob: bytes,
        train_delta: TrainDelta,
        *,
        clip: float,
        scale: float,
        max_examples: int,
    ) -> tuple[np.ndarray, dict[str, bytes], int, dict[str, float]]:
        """Returns (masked uint32 vector, blobs with the MAC, num_examples, metrics)."""
        s = self._session(round_id)
        self._receive_shares(s, round_id, json.loads(inbox_blob))
        deltas, n, metrics = train_delta()
        n = min(n, max_examples)
        flat = np.concatenate([np.ravel(d) for d in deltas], dtype=np.float64)
        flat *= n
        vec = np.empty(len(flat) + 1, np.uint32)
        sc.encode_fixed(flat, clip=clip * n, scale=scale, out=vec[:-1])
        vec[-1] = n
        masks = [(s.seed, True)] + [
            (sc.agree(s.s_sk, s_pk, b"mask"), s.index < j) for j, (_, s_pk) in s.neighbours.items()
        ]
        sc.apply_masks(vec, masks)  # + self mask, + mask to each higher neighbour, - to each lower
        tag = sc.mac(sc.agree(s.c_sk, s.server_pk, b"mac"), round_id, s.index, vec)
        return vec, {"mac": tag}, n, metrics

    def unmask(self, round_id: str, lists_blob: bytes) -> dict[str, bytes]:
        s = self._session(round_id)
        lists = json.loads(lists_blob)
        survivors, dropped = set(lists["survivors"]), set(lists["dropped"])
        if s.revealed or survivors & dropped or len(survivors) < s.threshold or s.index not in survivors:
            raise IntegrityError("secagg unmask request is inconsistent; refusing to reveal shares")
        s.revealed = True
        b = {str(i): sh[0].hex() for i, sh in s.held.items() if i in survivors}
        k = {str(i): sh[1].hex() for i, sh in s.held.items() if i in dropped}
        self.sessions.pop(round_id, None)
        return {"reveal": json.dumps({"b": b, "s": k}).encode()}

    def _session(self, round_id: str) -> _Session:
        s = self.sessions.get(round_id)
        if s is None:
            raise InvalidInputError(f"no secagg session for round {round_id}")
        return s

    def _receive_shares(self, s: _Session, round_id: str, inbox: dict[str, str]) -> None:
        for src_text, blob in inbox.items():
            src = int(src_text)
            if src not in s.neighbours:
                raise IntegrityError(f"secagg share from non-neighbour {src}")
            try:
                plain = sc.open_sealed(
                    sc.agree(s.c_sk, s.neighbours[src][0], b"share"), bytes.fromhex(blob), round_id.encode()
                )
            except InvalidTag as err:
                raise IntegrityError(f"secagg share from {src} failed authentication") from err
            if int.from_bytes(plain[:4], "big") != src or int.from_bytes(plain[4:8], "big") != s.index:
                raise IntegrityError("secagg share addressed to someone else")
            n = 2 + sc.SHARE_BYTES
            s.held[src] = (plain[8 : 8 + n], plain[8 + n : 8 + 2 * n])
