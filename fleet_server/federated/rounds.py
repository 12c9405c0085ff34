"""The rounds of a federated run over `FleetGrid`, and the strategy they share.

Each round is Flower's `Strategy.start` loop body unrolled: configure_train -> send_and_receive
(or the SecAgg+ stages) -> score every update and bound norms -> aggregate_train -> the round
record and its audit entry. A round with fewer valid results than `min_results` is skipped (the
model is unchanged). Flower's sampler would wait forever for `min_nodes` devices; we give up after
the round timeout. After each round the reputation book is written back (reputation_store.py).

Owns: building the run's strategy (with the model's root set and reputation book), the steps of a
round and the cancel checkpoints inside them. Does not own the run slot, its thread or how a run
ends (runner.py, slot.py), or the rows themselves (run_records.py).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Hashable
from dataclasses import replace

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import Strategy
from sqlalchemy import Engine

from fleet_server.federated import reputation_store
from fleet_server.federated.defences.secure import ValidatedAggregate
from fleet_server.federated.grid import FleetGrid
from fleet_server.federated.models import FlRound
from fleet_server.federated.privacy import epsilon_after
from fleet_server.federated.robust import bound_norms, score_replies
from fleet_server.federated.rootdata import RootData
from fleet_server.federated.run_records import RunRecords, digest
from fleet_server.federated.runspec import EvaluateFn, RunSpec
from fleet_server.federated.secagg import SecAggRound
from fleet_server.federated.slot import ActiveRun, RunCancelledError, check_stop
from fleet_server.federated.strategy import make_strategy
from fleet_server.models import utcnow

logger = logging.getLogger(__name__)


def build_strategy(
    engine: Engine, spec: RunSpec, root_data: RootData | None, reputations: dict[str, dict[Hashable, float]]
) -> tuple[Strategy, dict[Hashable, float]]:
    """The run's strategy with the model's root set (the `robust-<rule>` defences use it, and
    under secure aggregation, where the server sees only the sum, it validates the aggregate),
    and the reputation book the strategy updates in place."""
    root = root_data.for_model(spec.model) if root_data is not None and spec.model else None
    book = reputations.setdefault(spec.model, {})
    if spec.model:  # the stored book is the truth: another replica or process may have moved it
        book.clear()
        book.update(reputation_store.load(engine, spec.model))
    strategy = make_strategy(spec.strategy, root=root, reputation=book)
    if spec.secure_aggregation and root is not None:
        strategy = ValidatedAggregate(strategy, root)
    return strategy, book


class Rounds:
    """Runs a run's rounds on `grid`, writing each round through `records`."""

    def __init__(self, *, engine: Engine, grid: FleetGrid, records: RunRecords) -> None:
        self._engine = engine
        self._grid = grid
        self._records = records

    def run(
        self,
        active: ActiveRun,
        spec: RunSpec,
        arrays: ArrayRecord,
        evaluate_fn: EvaluateFn | None,
        *,
        root_data: RootData | None,
        reputations: dict[str, dict[Hashable, float]],
    ) -> tuple[ArrayRecord, list[int]]:
        """Returns the final arrays and the number of valid results of each round."""
        strategy, book = build_strategy(self._engine, spec, root_data, reputations)
        config = ConfigRecord(dict(spec.train_config))
        if spec.dp_noise_multiplier > 0:
            config["dp-noise-multiplier"] = spec.dp_noise_multiplier
            config["dp-clip"] = spec.dp_clip
        self._grid.round_timeout_s = spec.round_timeout_s
        results: list[int] = []
        for rnd in range(1, spec.num_rounds + 1):
            check_stop(active.stop)
            arrays, valid = self._round(
                active, rnd, spec, strategy, arrays, config=config, evaluate_fn=evaluate_fn
            )
            results.append(valid)
            if spec.model and book:
                reputation_store.save(self._engine, spec.model, book, active.fence)
        return arrays, results

    def _round(
        self,
        active: ActiveRun,
        rnd: int,
        spec: RunSpec,
        strategy: object,
        arrays: ArrayRecord,
        *,
        config: ConfigRecord,
        evaluate_fn: EvaluateFn | None,
    ) -> tuple[ArrayRecord, int]:
        run_id, stop = active.run_id, active.stop
        started, t0 = utcnow(), time.monotonic()
        if active.fence is not None:  # the round a takeover names in its reason
            self._records.set_round(run_id, rnd, active.fence)
        before = self._grid.counters()
        self._await_nodes(spec, stop)
        messages = list(strategy.configure_train(rnd, arrays, config, self._grid))  # type: ignore[attr-defined]
        if spec.secure_aggregation:
            replies = self._secure(f"{run_id[:12]}:{rnd}", spec, messages, arrays, stop)
        else:
            replies = list(self._grid.send_and_receive(messages, timeout=spec.round_timeout_s, stop=stop))
        check_stop(stop)  # a cancelled round is abandoned: nothing aggregated, nothing recorded
        valid = [m for m in replies if not m.has_error()]
        devices = self._grid.device_ids([m.metadata.src_node_id for m in valid])
        scores = dict(zip(devices, score_replies(arrays, valid), strict=True))
        if spec.norm_bound > 0:
            bound_norms(arrays, valid, spec.norm_bound)
        if hasattr(strategy, "num_nodes_to_select"):
            strategy.num_nodes_to_select = max(1, len(valid) - spec.strategy.malicious)
        parent = digest(arrays)
        metrics: dict[str, float] = {}
        if len(valid) >= spec.min_results:
            new, agg_metrics = strategy.aggregate_train(rnd, replies)  # type: ignore[attr-defined]
            arrays = new if new is not None else arrays
            metrics |= _metrics(agg_metrics)
        else:
            logger.warning(
                "round skipped run_id=%s round=%d valid=%d < min_results=%d",
                run_id,
                rnd,
                len(valid),
                spec.min_results,
            )
        if evaluate_fn is not None:
            metrics |= {f"server_{k}": v for k, v in evaluate_fn(rnd, arrays).items()}
        after = self._grid.counters()
        eps = (
            epsilon_after(rnd, spec.dp_noise_multiplier, spec.dp_delta)
            if spec.dp_noise_multiplier > 0
            else 0.0
        )
        row = FlRound(
            run_id=run_id,
            server_round=rnd,
            sampled=len(messages),
            results=len(valid),
            failures=len(replies) - len(valid) + len(messages) - len(replies),
            rejected=_diff(after["rejected"], before["rejected"]),
            dropped=_diff(after["dropped"], before["dropped"]),
            metrics=metrics,
            anomaly_scores={d: round(s, 4) for d, s in scores.items()},
            epsilon=eps,
            delta=spec.dp_delta,
            parent_digest=parent,
            arrays_digest=digest(arrays),
            duration_s=time.monotonic() - t0,
            started_at=started,
            finished_at=utcnow(),
        )
        what = "round_aggregated" if len(valid) >= spec.min_results else "round_skipped"
        counts: dict[str, object] = {"round": rnd, "sampled": len(messages), "results": len(valid),
                                     "epsilon": eps, "arrays_digest": digest(arrays)}  # fmt: skip
        self._records.round_done(row, fence=active.fence, what=what, counts=counts)
        logger.info(
            "round done run_id=%s round=%d sampled=%d results=%d duration=%.2fs",
            run_id,
            rnd,
            len(messages),
            len(valid),
            time.monotonic() - t0,
        )
        return arrays, len(valid)

    def _await_nodes(self, spec: RunSpec, stop: threading.Event) -> None:
        """Flower's sampler waits forever for `min_available_nodes`; we give up after the round timeout."""
        deadline = time.monotonic() + spec.round_timeout_s
        while (online := len(list(self._grid.get_node_ids()))) < spec.strategy.min_nodes:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"only {online} eligible devices online within the round timeout"
                    f" ({spec.round_timeout_s:g}s), need {spec.strategy.min_nodes}"
                )
            if stop.wait(0.2):
                raise RunCancelledError

    def _secure(
        self,
        round_id: str,
        spec: RunSpec,
        messages: list[Message],
        arrays: ArrayRecord,
        stop: threading.Event,
    ) -> list[Message]:
        """SecAgg+ stages; the strategy then aggregates a single reply holding the unmasked mean."""
        if not messages:
            return []
        params = replace(spec.secagg, timeout_s=spec.round_timeout_s)
        out = SecAggRound(self._grid, params, round_id, stop=stop).run(messages)
        check_stop(stop)
        self._grid.note("secagg", out.rejected)
        if out.mean_delta is None:
            return []
        offset, new = 0, {}
        for key, array in arrays.items():
            value = array.numpy()
            chunk = out.mean_delta[offset : offset + value.size].reshape(value.shape)
            new[key] = Array((value + chunk).astype(value.dtype))
            offset += value.size
        metrics = MetricRecord(
            {
                "num-examples": out.total_examples,
                "secagg-survivors": len(out.survivors),
                "secagg-error-bound": out.error_bound,
            }
        )
        request = messages[0]
        request.metadata.__dict__["_message_id"] = request.metadata.message_id or uuid.uuid4().hex
        return [Message(RecordDict({"arrays": ArrayRecord(new), "metrics": metrics}), reply_to=request)]


def _metrics(record: MetricRecord | None) -> dict[str, float]:
    if record is None:
        return {}
    return {k: float(v) for k, v in record.items() if isinstance(v, int | float)}


def _diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
