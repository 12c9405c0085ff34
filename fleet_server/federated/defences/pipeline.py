"""`Defended`: Flower's rule behind the defences, the strategy every `robust-<rule>` name builds.

Per round, on the valid replies (flat updates, rows = devices):

1. reputation (reputation.py): each device's cosine with the server's own update on its root set
   (FLTrust) or, without a root set, with the median update, summed over rounds and runs; at most
   `max_drop` devices with a negative sum are excluded;
2. optional FLAME-style majority clustering (flame.py), off by default (it drops honest
   minorities under non-IID data);
3. sybil grouping (sybil.py): near-identical updates share one device's weight;
4. adaptive norm clipping to `clip_factor` x the round's median norm (clipping.py);
5. Flower's rule aggregates: FedAvg on the clipped updates as they are; MultiKrum, trimmed mean
   and median on bucket means of `bucket` devices (bucketing.py), so they stop singling out the
   honest devices whose data differs most; `cclip` replaces the rule by centered clipping
   around the previous round's step;
6. on the dormant weights, the coordinate-wise median of the updates replaces the mean
   (dormant.py): the backdoor's hiding place. A weight (feature j, class c) is dormant when j is
   quiet on the root set (mean activation below `dormant_rel` x the most active feature's) and
   class c's root images do not draw j either (`dormant_per_class`); the mean stays on a dormant
   weight where the root-set loss gradient backs it (`dormant_gate`), so a rare class keeps the
   faint features it uses while a trigger on features no root image activates gets the median;
7. optional Gaussian noise of `noise` x the clipping bound (FLAME);
8. validation (validation.py): the candidate's loss on the root set must not rise beyond the
   margin, else the round is rejected and the model stays.

Steps 1 (as FLTrust), 6 and 8 need a root set matching the model (`head.HeadOracle`); without one
they fall back (median reference) or are skipped. The aggregate metrics carry what happened
(`robust-excluded`, `robust-clip-bound`, `robust-rejected`, ...). Secure aggregation hides the
rows, so none of 1-5 can run there; see `strategy.py` for what does.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable, MutableMapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedMedian, FedTrimmedAvg, MultiKrum, Strategy

from fleet_server.federated.defences import bucketing, clipping, dormant, flame, sybil, validation
from fleet_server.federated.defences.head import HeadOracle
from fleet_server.federated.defences.reputation import Reputation, cosines, median_reference
from fleet_server.federated.defences.wrapper import Wrapping
from fleet_server.federated.robust import _array_record, _flat
from fleet_server.federated.rootdata import RootSet

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DefenceConfig:
    reputation: bool = True
    flame: bool = False
    clip_factor: float = 2.0  # x median norm; 0 = off
    clip_per_step: bool = False  # the bound on the norm per local step (clipping.clip_to_median)
    bucket: int = 2  # bucket size before a non-mean rule; 1 = off
    cclip: bool = False
    sybil: float = 0.95  # cosine above which updates share one device's weight; 0 = off
    dormant: bool = True
    dormant_rel: float = 0.25  # x the most active feature's mean activation on the root set
    dormant_per_class: bool = True  # judge each weight (feature, class) on that class's root images
    dormant_gate: bool = True  # keep the mean on a dormant weight the root-set gradient backs
    noise: float = 0.0  # x the clipping bound; 0 = off
    validate: bool = True
    margin: float = 0.1
    seed: int = 0


def _weight(msg: Message) -> float:
    for value in msg.content.values():
        if isinstance(value, MetricRecord) and "num-examples" in value:
            return float(value["num-examples"])  # type: ignore[arg-type]
    return 1.0


def _delta(msg: Message, base: np.ndarray) -> np.ndarray:
    found = _array_record(msg)
    return _flat(found[1]) - base if found is not None else np.zeros_like(base)


def _record(like: ArrayRecord, vec: np.ndarray) -> ArrayRecord:
    out, i = {}, 0
    for key, array in like.items():
        value = array.numpy()
        out[key] = Array(vec[i : i + value.size].reshape(value.shape).astype(value.dtype))
        i += value.size
    return ArrayRecord(out)


def _set(msg: Message, like: ArrayRecord, vec: np.ndarray, weight: float) -> None:
    found = _array_record(msg)
    key = found[0] if found is not None else "arrays"
    msg.content[key] = _record(like, vec)
    for mkey, value in list(msg.content.items()):
        if isinstance(value, MetricRecord) and "num-examples" in value:
            msg.content[mkey] = MetricRecord({**value, "num-examples": weight})


class Defended(Wrapping):
    def __init__(
        self,
        inner: Strategy,
        *,
        max_drop: int,
        root: RootSet | None = None,
        config: DefenceConfig | None = None,
        reputation: MutableMapping[Hashable, float] | None = None,
    ) -> None:
        super().__init__(inner)
        self.max_drop = max_drop
        self.root = root
        self.config = config or DefenceConfig()
        self.reputation = Reputation(reputation)
        self._train: dict[str, float] = {}
        self._momentum: np.ndarray | None = None
        self._rng = np.random.default_rng(self.config.seed)
        self._oracle: HeadOracle | None = None
        self._oracle_for: tuple[tuple[int, ...], ...] | None = None
        self.excluded: list[Hashable] = []  # the devices the last round excluded (for benches)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._train = {k: float(v) for k, v in config.items() if isinstance(v, (int, float))}
        return super().configure_train(server_round, arrays, config, grid)

    def oracle(self, arrays: ArrayRecord) -> HeadOracle | None:
        shapes = tuple(tuple(a.numpy().shape) for a in arrays.values())
        if self._oracle_for != shapes:
            self._oracle, self._oracle_for = HeadOracle.for_arrays(self.root, arrays), shapes
        return self._oracle

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        valid = [m for m in replies if not m.has_error()]
        g = self._arrays
        if g is None or not valid:
            return self.inner.aggregate_train(server_round, replies)
        cfg, base = self.config, _flat(g)
        updates = np.stack([_delta(m, base) for m in valid])
        weights = np.array([_weight(m) for m in valid])
        oracle = self.oracle(g)
        stats: dict[str, float] = {}
        server_step = None
        if oracle is not None:
            lr = self._train.get("lr", 0.1)
            epochs, batch = int(self._train.get("local-epochs", 1)), int(self._train.get("batch-size", 32))
            server_step = oracle.update(base, lr, epochs, batch, seed=server_round)
        keep = np.ones(len(valid), dtype=bool)
        if cfg.reputation:
            ref = server_step if server_step is not None else median_reference(updates)
            devices = [m.metadata.src_node_id for m in valid]
            rep = self.reputation.observe(devices, cosines(updates, ref))
            keep &= ~Reputation.excluded(rep, self.max_drop)
        if cfg.flame:
            keep &= flame.majority(updates)
        stats["robust-excluded"] = float((~keep).sum())
        self.excluded = [m.metadata.src_node_id for m, k in zip(valid, keep, strict=True) if not k]
        kept = [m for m, k in zip(valid, keep, strict=True) if k]
        updates, weights = updates[keep], weights[keep]
        examples = weights.copy()
        if cfg.sybil > 0:
            sizes = sybil.group_sizes(updates, cfg.sybil)
            weights = weights / np.maximum(sizes, 1.0)
            stats["robust-sybil"] = float((sizes > 1).sum())
        bound = 0.0
        if cfg.clip_factor > 0:
            updates, bound = clipping.clip_to_median(updates, cfg.clip_factor, self._steps(examples))
        stats["robust-clip-bound"] = bound
        step = self._rule(server_round, kept=kept, g=g, base=base, updates=updates, weights=weights)
        if step is None:
            return None, MetricRecord(stats)  # type: ignore[arg-type]
        if cfg.dormant and oracle is not None:
            step, n = self._dormant(oracle, base, step, updates)
            stats["robust-dormant-coords"] = float(n)
        if cfg.noise > 0 and bound > 0:
            step = step + self._rng.normal(0.0, cfg.noise * bound, step.shape)
        if cfg.validate and oracle is not None:
            now, _ = oracle.loss_acc(base)
            cand, cand_acc = oracle.loss_acc(base + step)
            ok = validation.accept(now, cand, cfg.margin)
            stats |= {
                "robust-root-loss": cand,
                "robust-root-accuracy": cand_acc,
                "robust-rejected": float(not ok),
            }
            if not ok:
                logger.warning("round %d rejected: root loss %.4f -> %.4f", server_round, now, cand)
                return g, MetricRecord(stats)  # type: ignore[arg-type]
        self._momentum = step
        return _record(g, base + step), MetricRecord(stats)  # type: ignore[arg-type]

    def _dormant(
        self, oracle: HeadOracle, base: np.ndarray, step: np.ndarray, updates: np.ndarray
    ) -> tuple[np.ndarray, int]:
        cfg = self.config
        mask = oracle.dormant(cfg.dormant_rel, cfg.dormant_per_class)
        gate = oracle.grad(base) if cfg.dormant_gate else None
        return dormant.median_on(mask, step, updates, gate)

    def _steps(self, examples: np.ndarray) -> np.ndarray | None:
        """Each device's local SGD steps from its examples and the round's config (clip per step)."""
        if not self.config.clip_per_step:
            return None
        epochs, batch = self._train.get("local-epochs", 1), self._train.get("batch-size", 32)
        out: np.ndarray = max(1.0, epochs) * np.ceil(examples / max(1.0, batch))
        return out

    def _rule(
        self,
        server_round: int,
        *,
        kept: list[Message],
        g: ArrayRecord,
        base: np.ndarray,
        updates: np.ndarray,
        weights: np.ndarray,
    ) -> np.ndarray | None:
        """The round's aggregate step from Flower's rule (or centered clipping) on the processed rows."""
        cfg = self.config
        if len(kept) == 0:
            return None
        if cfg.cclip:
            center = self._momentum if self._momentum is not None else np.zeros_like(base)
            tau = float(np.median(np.linalg.norm(updates - center, axis=1)))
            return clipping.centered_clip(updates, weights, center, tau)
        rows, rweights, msgs = updates, weights, kept
        if isinstance(self.inner, (MultiKrum, FedMedian, FedTrimmedAvg)) and cfg.bucket > 1:
            rows, rweights = bucketing.buckets(updates, weights, cfg.bucket, self._rng)
            msgs = kept[: len(rows)]
        for msg, row, weight in zip(msgs, rows, rweights, strict=True):
            _set(msg, g, base + row, float(weight))
        if isinstance(self.inner, MultiKrum):
            f = min(self.max_drop, max(0, (len(msgs) - 3) // 2))
            self.inner.num_malicious_nodes = f
            self.inner.num_nodes_to_select = max(1, len(msgs) - f)
        out, _ = self.inner.aggregate_train(server_round, msgs)
        return None if out is None else _flat(out) - base
