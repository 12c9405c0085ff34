"""Per-device anomaly scores and norm bounding of updates, applied to replies before aggregation.

The score of a device is the robust z-score of its update norm ||w_i - w_global|| against the
round's median and MAD, plus the cosine distance of its update to the coordinate-wise median
update (sign-flipped updates score ~2). Norm bounding scales every update to at most `bound`
(Sun et al. 2019, "Can you really backdoor FL?"); it runs under any strategy. `bound_to_median`
sets that bound from the round itself (its median update norm) and `drop_opposed` removes a few
updates that point against the coordinate-wise median update; `strategy.PreAggregated` composes
both in front of Flower's rules. Under non-IID data the median update mostly says "lower the
classes you lack", so honest devices holding rare classes can look opposed too: the filter is
capped at the assumed number of attackers. Pure numpy over Flower records; no I/O.
"""

from __future__ import annotations

import logging

import numpy as np
from flwr.app import Array, ArrayRecord, Message

logger = logging.getLogger(__name__)


def _flat(record: ArrayRecord) -> np.ndarray:
    return np.concatenate([a.numpy().astype(np.float64).ravel() for a in record.values()])


def _array_record(msg: Message) -> tuple[str, ArrayRecord] | None:
    for key, value in msg.content.items():
        if isinstance(value, ArrayRecord):
            return key, value
    return None


def update_vectors(global_arrays: ArrayRecord, replies: list[Message]) -> list[np.ndarray]:
    base = _flat(global_arrays)
    out = []
    for msg in replies:
        found = _array_record(msg)
        out.append(_flat(found[1]) - base if found is not None else np.zeros_like(base))
    return out


def anomaly_scores(updates: list[np.ndarray]) -> list[float]:
    """Robust z-score of each update norm plus its cosine distance to the median update."""
    if not updates:
        return []
    norms = np.array([np.linalg.norm(u) for u in updates])
    med = float(np.median(norms))
    mad = float(np.median(np.abs(norms - med))) or max(med * 0.1, 1e-12)
    center = np.median(np.stack(updates), axis=0)
    cnorm = float(np.linalg.norm(center)) or 1e-12
    scores = []
    for u, n in zip(updates, norms, strict=True):
        cos = float(u @ center) / (float(n) * cnorm) if n > 0 else 1.0
        scores.append(abs(float(n) - med) / (1.4826 * mad) + (1.0 - cos))
    return scores


def bound_norms(global_arrays: ArrayRecord, replies: list[Message], bound: float) -> int:
    """Scale each reply's update to norm <= bound in place; returns how many were scaled."""
    scaled = 0
    for msg in replies:
        found = _array_record(msg)
        if found is None:
            continue
        key, record = found
        deltas = {k: a.numpy().astype(np.float64) - global_arrays[k].numpy() for k, a in record.items()}
        norm = float(np.sqrt(sum(float(np.sum(d * d)) for d in deltas.values())))
        if norm <= bound:
            continue
        factor = bound / norm
        msg.content[key] = ArrayRecord(
            {
                k: Array((global_arrays[k].numpy() + d * factor).astype(record[k].numpy().dtype))
                for k, d in deltas.items()
            }
        )
        scaled += 1
    return scaled


def bound_to_median(global_arrays: ArrayRecord, replies: list[Message], factor: float = 1.0) -> float:
    """Adaptive norm bounding: bound = factor x the round's median update norm; returns the bound."""
    norms = [float(np.linalg.norm(u)) for u in update_vectors(global_arrays, replies)]
    bound = factor * float(np.median(norms)) if norms else 0.0
    if bound > 0:
        bound_norms(global_arrays, replies, bound)
    return bound


def median_cosines(global_arrays: ArrayRecord, replies: list[Message]) -> list[float]:
    """Cosine of each reply's update with the coordinate-wise median update (0 for a zero update)."""
    updates = update_vectors(global_arrays, replies)
    if not updates:
        return []
    center = np.median(np.stack(updates), axis=0)
    cn = float(np.linalg.norm(center))
    return [float(u @ center) / (float(np.linalg.norm(u)) * cn or 1.0) for u in updates]


def drop_opposed(
    global_arrays: ArrayRecord,
    replies: list[Message],
    max_drop: int,
    history: dict[int, float] | None = None,
) -> list[Message]:
    """Drop at most `max_drop` replies that point against the median update, the most opposed first.

    With `history` (node id -> running sum of its cosines, updated here), a node is judged on its
    sum over rounds, not on one round: near convergence honest non-IID updates scatter around
    zero cosine, and a persistent attacker (sign flip, inner-product manipulation) that stood
    out in the first rounds stays ranked below them.
    """
    if len(replies) < 3 or max_drop <= 0:
        return list(replies)
    cos = median_cosines(global_arrays, replies)
    if history is not None:
        for i, msg in enumerate(replies):
            node = msg.metadata.src_node_id
            history[node] = history.get(node, 0.0) + cos[i]
            cos[i] = history[node]
    order = sorted(range(len(replies)), key=lambda i: cos[i])
    drop = {i for i in order[:max_drop] if cos[i] < 0}
    return [m for i, m in enumerate(replies) if i not in drop]
