"""What a federated run is asked to do: `RunSpec`, and the callables a run is handed.

Owns the spec's fields and defaults, whether a spec may run (`validate_spec`: the bounds of
limits.py, a known strategy, secure aggregation only with a linear one) and its round trip
through `fl_run.config` (`jsonable` / `spec_from_config`). Does not build the run's strategy
(rounds.py, strategy.py) or run anything (runner.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord
from sqlmodel import Session

from fleet_server.errors import InvalidRequestError
from fleet_server.federated.limits import check_spec
from fleet_server.federated.secagg import SecAggParams
from fleet_server.federated.strategy import LINEAR, StrategySpec, make_strategy

EvaluateFn = Callable[[int, ArrayRecord], dict[str, float]]
Fence = Callable[[Session], None]  # raises (LeaseLost) inside the transaction when the runner lost its lease
Eligible = Callable[[set[str]], set[str]]


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


def validate_spec(spec: RunSpec) -> None:
    """Raises: InvalidRequestError for a spec out of bounds or an unknown/unsuitable strategy."""
    check_spec(spec)
    make_strategy(spec.strategy)
    if spec.secure_aggregation and spec.strategy.name.lower() not in LINEAR:
        raise InvalidRequestError(
            "secure aggregation needs a linear strategy (fedavg, fedprox, fedadam, dp-fedavg): robust"
            " rules see each update. Under secure aggregation what applies is device-side norm"
            " clipping (train_config clipping_norm), validation of the aggregate on the model's"
            " evaluation set, and DP noise (dp_noise_multiplier)"
        )


def spec_from_config(config: dict[str, Any]) -> RunSpec:
    """The RunSpec a run was recorded with (`fl_run.config`, `asdict` of the spec)."""
    c = dict(config)
    strategy = StrategySpec(**c.pop("strategy", {}))
    secagg = SecAggParams(**c.pop("secagg", {}))
    return RunSpec(strategy=strategy, secagg=secagg, **c)


def jsonable(spec: RunSpec) -> dict[str, object]:
    return asdict(spec)
