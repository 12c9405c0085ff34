"""FedAvg over Flower's own deployment engine; writes a monotonic timestamp at each round start."""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


class StampedFedAvg(FedAvg):
    def __init__(self, stamps: str, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.stamps = stamps

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        with open(self.stamps, "a") as fh:
            fh.write(f"{server_round} {time.time()}\n")
        return super().configure_train(server_round, arrays, config, grid)


@app.main()
def main(grid: Grid, context: Context) -> None:
    n = int(context.run_config["num-nodes"])
    rounds = int(context.run_config["num-server-rounds"])
    strategy = StampedFedAvg(
        str(context.run_config["stamps"]), fraction_evaluate=0.0, min_train_nodes=n, min_available_nodes=n
    )
    init = ArrayRecord({"w": Array(np.zeros((64, 10), np.float32)), "b": Array(np.zeros(10, np.float32))})
    strategy.start(grid=grid, initial_arrays=init, num_rounds=rounds)
    with open(str(context.run_config["stamps"]), "a") as fh:
        fh.write(f"end {time.time()}\n")
