"""Drives a federated run: a Flower strategy over `FleetGrid`, one round record per round.

The loop is Flower's `Strategy.start` unrolled (configure_train -> send_and_receive ->
aggregate_train) so we can, between receiving and aggregating, score every update, bound norms,
and write the round (participants, failures, refusals, anomaly scores, DP epsilon, model digests)
to the database. The strategy itself runs unchanged. One run at a time per server process; it
runs in a worker thread because Flower strategies block.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from sqlalchemy import Engine
from sqlmodel import Session, select

from fleet_server.errors import ConflictError, InvalidRequestError
from fleet_server.federated.grid import FleetGrid
from fleet_server.federated.handoff import write_artifacts
from fleet_server.federated.models import FlRound, FlRun
from fleet_server.federated.privacy import epsilon_after
from fleet_server.federated.robust import anomaly_scores, bound_norms, update_vectors
from fleet_server.federated.secagg import SecAggParams, SecAggRound
from fleet_server.federated.strategy import LINEAR, StrategySpec, make_strategy
from fleet_server.models import utcnow

logger = logging.getLogger(__name__)

EvaluateFn = Callable[[int, ArrayRecord], dict[str, float]]


@dataclass(frozen=True)
class RunSpec:
    strategy: StrategySpec = field(default_factory=StrategySpec)
    num_rounds: int = 3
    round_timeout_s: float = 60.0
    min_results: int = 1  # fewer valid results than this: the round is skipped, model unchanged
    norm_bound: float = 0.0  # 0 = off
    secure_aggregation: bool = False  # SecAgg+; linear strategies only (no per-update scores)
    secagg: SecAggParams = field(default_factory=SecAggParams)
    train_config: dict[str, float | int | str] = field(default_factory=lambda: {"lr": 0.1, "local-epochs": 1})
    dp_noise_multiplier: float = 0.0
    dp_clip: float = 1.0
    dp_delta: float = 1e-5
    cohort: dict[str, str | list[str]] = field(default_factory=dict)
    model: str = ""  # registry model name: the final head becomes its next version (the hand-off)
    parent_version: int = 0  # registry version the run started from; 0 = the newest at hand-off


# Called after a completed run with (spec, final arrays, lineage): the registry hand-off.
CompletionHook = Callable[[RunSpec, dict[str, np.ndarray], dict[str, object]], None]


def digest(arrays: ArrayRecord) -> str:
    h = hashlib.sha256()
    for key, array in arrays.items():
        h.update(key.encode())
        h.update(np.ascontiguousarray(array.numpy()).tobytes())
    return h.hexdigest()


class FederatedRunner:
    """Starts runs in a worker thread and records them; `result` holds the last final model."""

    def __init__(
        self, *, engine: Engine, grid: FleetGrid, out_dir: Path, on_complete: CompletionHook | None = None
    ) -> None:
        self._engine = engine
        self._grid = grid
        self.out_dir = out_dir
        self.on_complete = on_complete
        self._thread: threading.Thread | None = None
        self.result: ArrayRecord | None = None

    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, spec: RunSpec, initial: ArrayRecord, evaluate_fn: EvaluateFn | None = None) -> str:
        """Raises: ConflictError when a run is already in progress."""
        if self.busy():
            raise ConflictError("a federated run is already in progress")
        make_strategy(spec.strategy)  # validate now: InvalidRequestError for the caller, not a failed run
        if spec.secure_aggregation and spec.strategy.name.lower() not in LINEAR:
            raise InvalidRequestError("secure aggregation needs a linear strategy (robust rules see updates)")
        run_id = uuid.uuid4().hex
        self._save(
            FlRun(
                id=run_id,
                strategy=spec.strategy.name,
                secure_aggregation=spec.secure_aggregation,
                num_rounds=spec.num_rounds,
                config=_jsonable(spec),
                cohort=dict(spec.cohort),
                parent_digest=digest(initial),
                delta=spec.dp_delta,
                created_at=utcnow(),
            )
        )
        self._thread = threading.Thread(
            target=self._guarded,
            args=(run_id, spec, initial, evaluate_fn),
            name=f"fl-run-{run_id[:8]}",
            daemon=True,
        )
        self._thread.start()
        return run_id

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def run_blocking(self, spec: RunSpec, initial: ArrayRecord, evaluate_fn: EvaluateFn | None = None) -> str:
        run_id = self.start(spec, initial, evaluate_fn)
        self.wait()
        return run_id

    def _guarded(
        self, run_id: str, spec: RunSpec, initial: ArrayRecord, evaluate_fn: EvaluateFn | None
    ) -> None:
        try:
            final = self._run(run_id, spec, initial, evaluate_fn)
        except Exception as err:
            logger.exception("federated run failed run_id=%s", run_id)
            self._finish(run_id, "failed", f"{type(err).__name__}: {err}"[:500], None, spec)
            return
        self.result = final
        self._finish(run_id, "completed", "", final, spec)

    def _run(
        self, run_id: str, spec: RunSpec, arrays: ArrayRecord, evaluate_fn: EvaluateFn | None
    ) -> ArrayRecord:
        strategy = make_strategy(spec.strategy)
        config = ConfigRecord(dict(spec.train_config))
        if spec.dp_noise_multiplier > 0:
            config["dp-noise-multiplier"] = spec.dp_noise_multiplier
            config["dp-clip"] = spec.dp_clip
        self._grid.round_timeout_s = spec.round_timeout_s
        for rnd in range(1, spec.num_rounds + 1):
            arrays = self._round(run_id, rnd, spec, strategy, arrays, config=config, evaluate_fn=evaluate_fn)
        return arrays

    def _round(
        self,
        run_id: str,
        rnd: int,
        spec: RunSpec,
        strategy: object,
        arrays: ArrayRecord,
        *,
        config: ConfigRecord,
        evaluate_fn: EvaluateFn | None,
    ) -> ArrayRecord:
        started, t0 = utcnow(), time.monotonic()
        before = self._grid.counters()
        self._await_nodes(spec)
        messages = list(strategy.configure_train(rnd, arrays, config, self._grid))  # type: ignore[attr-defined]
        if spec.secure_aggregation:
            replies = self._secure(f"{run_id[:12]}:{rnd}", spec, messages, arrays)
        else:
            replies = list(self._grid.send_and_receive(messages, timeout=spec.round_timeout_s))
        valid = [m for m in replies if not m.has_error()]
        devices = self._grid.device_ids([m.metadata.src_node_id for m in valid])
        scores = dict(zip(devices, anomaly_scores(update_vectors(arrays, valid)), strict=True))
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
        self._save(
            FlRound(
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
        )
        logger.info(
            "round done run_id=%s round=%d sampled=%d results=%d duration=%.2fs",
            run_id,
            rnd,
            len(messages),
            len(valid),
            time.monotonic() - t0,
        )
        return arrays

    def _await_nodes(self, spec: RunSpec) -> None:
        """Flower's sampler waits forever for `min_available_nodes`; we give up after the round timeout."""
        deadline = time.monotonic() + spec.round_timeout_s
        while (online := len(list(self._grid.get_node_ids()))) < spec.strategy.min_nodes:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {online} eligible devices online, need {spec.strategy.min_nodes}")
            time.sleep(0.2)

    def _secure(
        self, round_id: str, spec: RunSpec, messages: list[Message], arrays: ArrayRecord
    ) -> list[Message]:
        """SecAgg+ stages; the strategy then aggregates a single reply holding the unmasked mean."""
        if not messages:
            return []
        params = replace(spec.secagg, timeout_s=spec.round_timeout_s)
        out = SecAggRound(self._grid, params, round_id).run(messages)
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

    def _finish(
        self, run_id: str, status: str, detail: str, final: ArrayRecord | None, spec: RunSpec
    ) -> None:
        with Session(self._engine) as s:
            run = s.get(FlRun, run_id)
            if run is None:
                return
            run.status, run.detail, run.finished_at = status, detail, utcnow()
            if final is not None:
                run.final_digest = digest(final)
            if spec.dp_noise_multiplier > 0:
                run.epsilon = epsilon_after(spec.num_rounds, spec.dp_noise_multiplier, spec.dp_delta)
            s.add(run)
            s.commit()
            if final is None:
                return
            rounds = s.exec(select(FlRound).where(FlRound.run_id == run_id)).all()
            arrays = {k: a.numpy() for k, a in final.items()}
            lineage = _lineage(run, rounds)
        write_artifacts(self.out_dir / run_id, arrays, lineage)
        if lineage["final_digest"] == lineage["parent_digest"]:
            # No round aggregated an update (every device declined or failed): nothing new to hand off.
            self._note(run_id, "no round aggregated an update: the model is unchanged, nothing handed off")
            return
        if self.on_complete is not None and spec.model:
            try:
                self.on_complete(spec, arrays, lineage)
            except Exception as err:  # the run itself completed; the hand-off failure is recorded on it
                logger.exception("hand-off failed run_id=%s model=%s", run_id, spec.model)
                self._note(run_id, f"hand-off failed: {type(err).__name__}: {err}")

    def _note(self, run_id: str, detail: str) -> None:
        logger.warning("run_id=%s %s", run_id, detail)
        with Session(self._engine) as s:
            run = s.get(FlRun, run_id)
            if run is not None:
                run.detail = detail[:500]
                s.add(run)
                s.commit()

    def _save(self, row: FlRun | FlRound) -> None:
        with Session(self._engine) as s:
            s.add(row)
            s.commit()


def _lineage(run: FlRun, rounds: list[FlRound] | Sequence[FlRound]) -> dict[str, object]:
    return {
        "run_id": run.id,
        "strategy": run.strategy,
        "parent_digest": run.parent_digest,
        "final_digest": run.final_digest,
        "epsilon": run.epsilon,
        "delta": run.delta,
        "cohort": run.cohort,
        "secure_aggregation": run.secure_aggregation,
        "participants_max": max((r.results for r in rounds), default=0),
        "rounds": [
            {
                "round_id": f"{run.id}:{r.server_round}",
                "round": r.server_round,
                "participants": r.results,
                "sampled": r.sampled,
                "digest": r.arrays_digest,
            }
            for r in sorted(rounds, key=lambda r: r.server_round)
        ],
    }


def _metrics(record: MetricRecord | None) -> dict[str, float]:
    if record is None:
        return {}
    return {k: float(v) for k, v in record.items() if isinstance(v, int | float)}


def _diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def _jsonable(spec: RunSpec) -> dict[str, object]:
    return asdict(spec)
