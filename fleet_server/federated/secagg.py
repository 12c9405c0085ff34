"""Server side of SecAgg+ over any Flower `Grid` (FleetGrid in production, a fake in unit tests).

One `SecAggRound.run(train_messages)` replaces the "send train messages, collect replies" step of
a round for a linear strategy: keys -> shares (routed, the server cannot read them) -> masked
updates (MAC-checked) -> unmask (self-mask seeds of survivors, mask keys of dropouts) -> the sum.
Devices talk in a random k-regular graph (k ~ 2 log2 n, SecAgg+), threshold t = k/2 + 1.

Fixed point: each device sends n_i * clip(delta_i, +-c) * S rounded, mod 2^32, plus n_i; with
S = (2^31 - 1) / (c * n_max * N_max) the sum cannot wrap. Error bound of the recovered weighted
mean, per coordinate: |err| <= survivors / (2 S sum n_i) from rounding, plus the clipping error
of any delta coordinate beyond c (the server cannot see that; choose c from the norm bound).

The server keeps only the transcript (public keys, sealed shares, masked vectors, revealed
shares) and the sum; a single survivor's update stays hidden behind its pairwise masks.

Protocol version (`secagg_crypto.VERSION`): a device's keys reply names the version it speaks; a
device of another version (or one that names none: version 1) is left out of the round, counted
as `secagg_version` and logged with both versions, and the roster names the server's version.

Cost: masked vectors are read as views of the reply bytes (no copy); each is MAC-checked and added
to the running sum in the same pass (`secagg_crypto.add_if_authentic`); every mask the server must
remove (self masks of survivors, pairwise masks of dropouts) is expanded in cache-sized blocks
straight into that sum, on `SecAggParams.mask_threads` threads (`secagg_crypto.apply_masks`).
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fleet_server.federated import secagg_crypto as sc
from fleet_server.federated.codec import array_view

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SecAggParams:
    clip: float = 1.0  # per-coordinate bound on a device's model delta
    max_examples: int = 1000  # n_i is capped here (weight of one device)
    max_clients: int = 1000
    degree: int = 0  # neighbours per device; 0 = min(n - 1, max(4, 2 ceil(log2 n)))
    timeout_s: float = 60.0
    mask_threads: int = 0  # threads expanding the masks at unmask time; 0 = one per core, at most 4

    @property
    def scale(self) -> float:
        return (2**31 - 1) / (self.clip * self.max_examples * self.max_clients)


@dataclass
class Transcript:
    """Everything the server sees in one secure round (what a curious server could analyse)."""

    public_keys: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    sealed_shares: dict[int, dict[int, str]] = field(default_factory=dict)
    masked: dict[int, np.ndarray] = field(default_factory=dict)
    revealed: dict[int, dict[str, dict[str, str]]] = field(default_factory=dict)
    self_mask_seeds: dict[int, bytes] = field(default_factory=dict)
    dropped_mask_keys: dict[int, bytes] = field(default_factory=dict)


@dataclass
class SecAggOutcome:
    mean_delta: np.ndarray | None
    total_examples: int
    survivors: list[int]
    dropped: list[int]
    rejected: Counter[str]
    error_bound: float
    transcript: Transcript
    node_of: dict[int, int]  # device index -> Flower node id


def neighbours(indices: list[int], degree: int, rng: random.Random | None = None) -> dict[int, list[int]]:
    """k-regular circulant graph over a random permutation of the devices (SecAgg+ needs random
    neighbourhoods: with sorted ones, a run of adjacent dropouts leaves a device's shares short)."""
    indices = list(indices)
    (rng or random.SystemRandom()).shuffle(indices)
    n = len(indices)
    k = degree or min(n - 1, max(4, 2 * math.ceil(math.log2(max(n, 2)))))
    k = min(k, n - 1)
    half = k // 2
    out: dict[int, set[int]] = {i: set() for i in indices}
    for pos, i in enumerate(indices):
        for step in range(1, half + 1):
            j = indices[(pos + step) % n]
            out[i].add(j)
            out[j].add(i)
    return {i: sorted(v) for i, v in out.items()}


class SecAggRound:
    """Runs the four stages for one round over `grid`."""

    def __init__(
        self, grid: Grid, params: SecAggParams, round_id: str, stop: threading.Event | None = None
    ) -> None:
        """`stop` (FleetGrid only): a cancelled run's event; once set, no further stage is sent."""
        self._grid = grid
        self._stop = stop
        self._p = params
        self._round_id = round_id
        self._sk, self._pk = sc.keypair()
        self.transcript = Transcript()

    def run(self, train_messages: list[Message]) -> SecAggOutcome:
        rejected: Counter[str] = Counter()
        node_of = {
            pos + 1: m.metadata.dst_node_id
            for pos, m in enumerate(sorted(train_messages, key=lambda m: m.metadata.dst_node_id))
        }
        template = train_messages[0]
        keys = self._stage("keys", {i: {} for i in node_of}, node_of)
        for i, reply in keys.items():
            c_pk, s_pk = _blob(reply, "c_pk"), _blob(reply, "s_pk")
            version = _blob(reply, "v").decode(errors="replace") or "1"
            if version != str(sc.VERSION):
                rejected["secagg_version"] += 1
                logger.warning(
                    "secagg device speaks protocol version %s, this server %d: left out of the round"
                    " (update the agent) round_id=%s node_id=%d",
                    version[:8],
                    sc.VERSION,
                    self._round_id,
                    node_of[i],
                )
            elif len(c_pk) == 32 and len(s_pk) == 32:
                self.transcript.public_keys[i] = (c_pk, s_pk)
            else:
                rejected["bad_keys"] += 1
        u1 = sorted(self.transcript.public_keys)
        graph = neighbours(u1, self._p.degree) if len(u1) >= 3 else {}
        threshold = (len(next(iter(graph.values()), [])) // 2) + 1
        shares = self._stage(
            "share",
            {i: {"roster": self._roster(i, graph[i], threshold)} for i in u1} if graph else {},
            node_of,
        )
        u2 = sorted(i for i, r in shares.items() if _blob(r, "shares"))
        inbox = self._route(shares, graph, set(u2))
        masked = self._stage(
            "masked", {i: {"inbox": json.dumps(inbox[i]).encode()} for i in u2}, node_of, template
        )
        survivors, total = self._check_masked(masked, rejected, template)
        dropped = sorted(set(u2) - set(survivors))
        lists = json.dumps({"survivors": survivors, "dropped": dropped}).encode()
        reveals = (
            self._stage("unmask", {i: {"lists": lists} for i in survivors}, node_of)
            if len(survivors) >= threshold
            else {}
        )
        unmasked = self._unmask(reveals, graph, survivors, dropped, threshold, total=total)
        return self._outcome(unmasked, survivors, dropped, rejected, node_of)

    # ------------------------------------------------------------------ stages

    def _stage(
        self,
        stage: str,
        payloads: dict[int, dict[str, bytes]],
        node_of: dict[int, int],
        template: Message | None = None,
    ) -> dict[int, Message]:
        msgs, index_of = [], {}
        for i, blobs in payloads.items():
            config = ConfigRecord({**blobs, "secagg-round": self._round_id})
            content = RecordDict({"config": config})
            if template is not None:
                content = _train_content(template, config, self._p)
            msg = Message(content, node_of[i], f"train.secagg_{stage}", group_id=self._round_id)
            msgs.append(msg)
            index_of[node_of[i]] = i
        if self._stop is not None and self._stop.is_set():
            return {}
        extra: dict[str, Any] = {"stop": self._stop} if self._stop is not None else {}
        replies = self._grid.send_and_receive(msgs, timeout=self._p.timeout_s, **extra) if msgs else []
        good = {index_of[r.metadata.src_node_id]: r for r in replies if not r.has_error()}
        logger.info(
            "secagg stage=%s round_id=%s sent=%d answered=%d", stage, self._round_id, len(msgs), len(good)
        )
        return good

    def _roster(self, me: int, peers: list[int], threshold: int) -> bytes:
        keys = self.transcript.public_keys
        return json.dumps(
            {
                "v": sc.VERSION,
                "me": me,
                "t": threshold,
                "server_pk": self._pk.hex(),
                "neighbours": {str(j): [keys[j][0].hex(), keys[j][1].hex()] for j in peers},
            }
        ).encode()

    def _route(
        self, shares: dict[int, Message], graph: dict[int, list[int]], alive: set[int]
    ) -> dict[int, dict[str, str]]:
        inbox: dict[int, dict[str, str]] = {i: {} for i in alive}
        for src in alive:
            sealed = json.loads(_blob(shares[src], "shares"))
            self.transcript.sealed_shares[src] = sealed
            for dst_text, blob in sealed.items():
                dst = int(dst_text)
                if dst in alive and dst in graph[src]:
                    inbox[dst][str(src)] = blob
        return inbox

    def _check_masked(
        self, masked: dict[int, Message], rejected: Counter[str], template: Message
    ) -> tuple[list[int], np.ndarray]:
        """Survivors (uploads whose MAC verifies) and the mod-2^32 sum of their masked vectors."""
        length = sum(math.prod(a.shape) for a in _arrays(template).values()) + 1
        survivors = []
        total = np.zeros(length, np.uint32)
        for i, reply in masked.items():
            record = reply.content.get("masked")
            vec = (
                array_view(record["masked"])
                if isinstance(record, ArrayRecord) and "masked" in record
                else None
            )
            key = sc.agree(self._sk, self.transcript.public_keys[i][0], b"mac")
            if vec is None or vec.shape != (length,) or vec.dtype != np.uint32:
                rejected["bad_shape"] += 1
            elif not sc.add_if_authentic(
                total, vec, _blob(reply, "mac"), key=key, round_id=self._round_id, index=i
            ):
                rejected["bad_mac"] += 1
                logger.warning("secagg masked update failed its MAC round_id=%s index=%d", self._round_id, i)
            else:
                self.transcript.masked[i] = vec
                survivors.append(i)
        return sorted(survivors), total

    def _unmask(
        self,
        reveals: dict[int, Message],
        graph: dict[int, list[int]],
        survivors: list[int],
        dropped: list[int],
        t: int,
        *,
        total: np.ndarray,
    ) -> np.ndarray | None:
        """`total` (the survivors' masked sum) with every mask removed, in place; None if too few
        shares came back to rebuild a seed or a dropout's key."""
        if not survivors or len(reveals) < t:
            return None
        b_shares: dict[int, list[bytes]] = {}
        s_shares: dict[int, list[bytes]] = {}
        for j, reply in reveals.items():
            data = json.loads(_blob(reply, "reveal"))
            self.transcript.revealed[j] = data
            for src, share in data["b"].items():
                b_shares.setdefault(int(src), []).append(bytes.fromhex(share))
            for src, share in data["s"].items():
                s_shares.setdefault(int(src), []).append(bytes.fromhex(share))
        masks: list[tuple[bytes, bool]] = []  # (seed, add): what to add to the sum to unmask it
        for i in survivors:
            if len(b_shares.get(i, [])) < t:
                return None
            seed = sc.shamir_combine(b_shares[i][:t])
            self.transcript.self_mask_seeds[i] = seed
            masks.append((seed, False))
        for d in dropped:
            if len(s_shares.get(d, [])) < t:
                return None
            raw = sc.shamir_combine(s_shares[d][:t])
            self.transcript.dropped_mask_keys[d] = raw
            sk = X25519PrivateKey.from_private_bytes(raw)
            for j in graph[d]:
                if j in self.transcript.masked:  # j added the pair's mask if j < d, else subtracted it
                    masks.append((sc.agree(sk, self.transcript.public_keys[j][1], b"mask"), j > d))
        sc.apply_masks(total, masks, threads=self._p.mask_threads or sc.mask_threads())
        return total

    def _outcome(
        self,
        total: np.ndarray | None,
        survivors: list[int],
        dropped: list[int],
        rejected: Counter[str],
        node_of: dict[int, int],
    ) -> SecAggOutcome:
        if total is None or int(total[-1]) == 0:
            return SecAggOutcome(None, 0, survivors, dropped, rejected, math.inf, self.transcript, node_of)
        n_total = int(total[-1])
        mean = sc.decode_fixed(total[:-1], scale=self._p.scale)
        mean /= n_total
        bound = len(survivors) / (2 * self._p.scale * n_total)
        return SecAggOutcome(mean, n_total, survivors, dropped, rejected, bound, self.transcript, node_of)


def _blob(reply: Message, key: str) -> bytes:
    record = reply.content.get("secagg")
    value = record.get(key) if isinstance(record, ConfigRecord) else None
    return value if isinstance(value, bytes) else b""


def _arrays(msg: Message) -> ArrayRecord:
    return next(v for v in msg.content.values() if isinstance(v, ArrayRecord))


def _train_content(template: Message, extra: ConfigRecord, p: SecAggParams) -> RecordDict:
    config = ConfigRecord()
    for value in template.content.values():
        if isinstance(value, ConfigRecord):
            config.update(value)
    config.update(extra)
    config.update({"secagg-clip": p.clip, "secagg-scale": p.scale, "secagg-max-examples": p.max_examples})
    return RecordDict({"arrays": _arrays(template), "config": config})
