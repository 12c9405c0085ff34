"""Choose and configure a Flower strategy by name (aggregation stays Flower's own code).

`make_strategy("multikrum", min_nodes=8, fraction=1.0, malicious=2)` -> a configured
`flwr.serverapp.strategy` instance. `robust-<rule>` (e.g. `robust-fedavg`, `robust-multikrum`)
puts the defences (`fleet_server.federated.defences.pipeline.Defended`: reputation against the
server's root-set update, sybil grouping, median-norm clipping, bucketing before a non-mean rule,
dormant-feature median, aggregate validation) in front of Flower's unchanged rule. Robust rules
and secure aggregation are exclusive: a run with secure aggregation must use a linear rule (fedavg
/ fedprox / fedadam); what still applies there is in `defences/secure.py`. The default stays
`fedavg`, which secure aggregation needs.
"""

from __future__ import annotations

from collections.abc import Hashable, MutableMapping
from dataclasses import dataclass, replace

from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    FedAvg,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
    Strategy,
)

from fleet_server.errors import InvalidRequestError
from fleet_server.federated.defences.pipeline import DefenceConfig, Defended
from fleet_server.federated.mean import InPlaceFedAdam, InPlaceFedAvg, InPlaceFedProx
from fleet_server.federated.rootdata import RootSet

LINEAR = frozenset({"fedavg", "fedprox", "fedadam", "dp-fedavg"})
_RULES = frozenset({"fedtrimmedavg", "fedmedian", "krum", "multikrum"})
ROBUST = _RULES | {f"robust-{r}" for r in _RULES | {"fedavg"}}


@dataclass(frozen=True)
class StrategySpec:
    name: str = "fedavg"
    min_nodes: int = 2
    fraction: float = 1.0
    malicious: int = 0  # f for the Krum family
    trim_beta: float = 0.2
    proximal_mu: float = 0.01
    server_lr: float = 0.1
    dp_noise_multiplier: float = 1.0  # dp-fedavg: Flower's central DP, server-side noise
    dp_clip: float = 1.0  # dp-fedavg: devices clip their update to this L2 norm


def make_strategy(
    spec: StrategySpec,
    *,
    root: RootSet | None = None,
    defence: DefenceConfig | None = None,
    reputation: MutableMapping[Hashable, float] | None = None,
) -> Strategy:
    """`root`: the server's labelled set for the model (FLTrust reference, dormant features,
    aggregate validation); `reputation`: per-device trust kept across runs; both only matter for
    `robust-<rule>` (`defences.pipeline.Defended`).

    Raises: InvalidRequestError for an unknown name."""
    common = {
        "fraction_train": spec.fraction,
        "fraction_evaluate": 0.0,
        "min_train_nodes": spec.min_nodes,
        "min_available_nodes": spec.min_nodes,
    }
    name = spec.name.lower()
    if name.startswith("robust-") and name in ROBUST:
        inner = make_strategy(replace(spec, name=name.removeprefix("robust-")))
        max_drop = spec.malicious or max(1, spec.min_nodes // 5)
        return Defended(inner, max_drop=max_drop, root=root, config=defence, reputation=reputation)
    if name == "fedavg":
        return InPlaceFedAvg(**common)  # type: ignore[arg-type]
    if name == "dp-fedavg":
        return DifferentialPrivacyClientSideFixedClipping(
            FedAvg(**common),  # type: ignore[arg-type]
            noise_multiplier=spec.dp_noise_multiplier,
            clipping_norm=spec.dp_clip,
            num_sampled_clients=spec.min_nodes,
        )
    if name == "fedprox":
        return InPlaceFedProx(proximal_mu=spec.proximal_mu, **common)  # type: ignore[arg-type]
    if name == "fedadam":
        return InPlaceFedAdam(eta=spec.server_lr, **common)  # type: ignore[arg-type]
    if name == "fedtrimmedavg":
        return FedTrimmedAvg(beta=spec.trim_beta, **common)  # type: ignore[arg-type]
    if name == "fedmedian":
        return FedMedian(**common)  # type: ignore[arg-type]
    if name == "krum":
        return Krum(num_malicious_nodes=spec.malicious, **common)  # type: ignore[arg-type]
    if name == "multikrum":
        select = max(1, spec.min_nodes - spec.malicious)
        return MultiKrum(num_malicious_nodes=spec.malicious, num_nodes_to_select=select, **common)  # type: ignore[arg-type]
    raise InvalidRequestError(f"unknown strategy {spec.name!r}; choose from {sorted(LINEAR | ROBUST)}")
