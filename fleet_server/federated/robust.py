"""Per-device anomaly scores and fixed norm bounding of updates, applied to replies before aggregation.

The score of a device is the robust z-score of its update norm ||w_i - w_global|| against the
round's median and MAD, plus the cosine distance of its update to the coordinate-wise median
update (sign-flipped updates score ~2); the runner records it for every round, whatever the
strategy. Norm bounding scales every update to at most `bound` (Sun et al. 2019, "Can you really
backdoor FL?"); it runs under any strategy (`RunSpec.norm_bound`). The `robust-<rule>` defences
live in `defences/`; this module also gives them the flat-vector helpers. Pure numpy over Flower
records; no I/O.
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
