"""Choose and configure a Flower strategy by name (aggregation stays Flower's own code).

`make_strategy("multikrum", min_nodes=8, fraction=1.0, malicious=2)` -> a configured
`flwr.serverapp.strategy` instance. Robust rules and secure aggregation are exclusive: a run with
secure aggregation must use a linear rule (fedavg / fedprox / fedadam).
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
    Strategy,
)

from fleet_server.errors import InvalidRequestError

LINEAR = frozenset({"fedavg", "fedprox", "fedadam", "dp-fedavg"})
ROBUST = frozenset({"fedtrimmedavg", "fedmedian", "krum", "multikrum"})


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


def make_strategy(spec: StrategySpec) -> Strategy:
    """Raises: InvalidRequestError for an unknown name."""
    common = {
        "fraction_train": spec.fraction,
        "fraction_evaluate": 0.0,
        "min_train_nodes": spec.min_nodes,
        "min_available_nodes": spec.min_nodes,
    }
    name = spec.name.lower()
    if name == "fedavg":
        return FedAvg(**common)  # type: ignore[arg-type]
    if name == "dp-fedavg":
        return DifferentialPrivacyClientSideFixedClipping(
            FedAvg(**common),  # type: ignore[arg-type]
            noise_multiplier=spec.dp_noise_multiplier,
            clipping_norm=spec.dp_clip,
            num_sampled_clients=spec.min_nodes,
        )
    if name == "fedprox":
        return FedProx(proximal_mu=spec.proximal_mu, **common)  # type: ignore[arg-type]
    if name == "fedadam":
        return FedAdam(eta=spec.server_lr, **common)  # type: ignore[arg-type]
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
