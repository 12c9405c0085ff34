"""What robustness is left when secure aggregation hides every update: the product's answer.

Under SecAgg+ the server sees only the (weighted) sum of the surviving devices' updates, so no
per-device defence can run on the server: no reputation, sybil grouping, clustering, bucketing,
server-side clipping, dormant-coordinate median or robust rule (`robust-<rule>` with secure
aggregation is refused). What still applies:

- device-side norm enforcement: the run's train config `clipping_norm` makes the agent clip its
  own update's L2 norm before masking (and `secagg-clip` bounds each coordinate in the fixed-point
  encoding). It binds devices running our agent code, e.g. one fed poisoned data; a modified agent
  can skip it and the server cannot check (norm proofs under SecAgg, RoFL, Lycklama et al. IEEE
  S&P 2023, are not implemented);
- validation of the aggregate on the server's root set (`ValidatedAggregate`, below): a round
  whose sum makes the model worse on the model's held data is rejected and the model stays;
- differential privacy: device-side noise (`dp_noise_multiplier`) bounds any one device's
  influence in the privacy sense and blunts backdoors a little; it costs accuracy.

Not covered under SecAgg: backdoors (the root set has no trigger, so validation cannot see one)
and slow poisoning that stays within the validation margin.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import Strategy

from fleet_server.federated.defences import validation
from fleet_server.federated.defences.head import HeadOracle
from fleet_server.federated.defences.wrapper import Wrapping
from fleet_server.federated.robust import _flat
from fleet_server.federated.rootdata import RootSet

logger = logging.getLogger(__name__)


class ValidatedAggregate(Wrapping):
    """`inner`'s aggregate, accepted only if its loss on the root set does not rise past the margin."""

    def __init__(self, inner: Strategy, root: RootSet, margin: float = 0.1) -> None:
        super().__init__(inner)
        self.root, self.margin = root, margin

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        out, metrics = self.inner.aggregate_train(server_round, replies)
        g = self._arrays
        oracle = HeadOracle.for_arrays(self.root, g) if g is not None else None
        if out is None or g is None or oracle is None:
            return out, metrics
        now, _ = oracle.loss_acc(_flat(g))
        cand, cand_acc = oracle.loss_acc(_flat(out))
        ok = validation.accept(now, cand, self.margin)
        stats = {"robust-root-loss": cand, "robust-root-accuracy": cand_acc, "robust-rejected": float(not ok)}
        merged = MetricRecord({**(metrics or {}), **stats})
        if not ok:
            logger.warning("round %d rejected: root loss %.4f -> %.4f", server_round, now, cand)
            return g, merged
        return out, merged
