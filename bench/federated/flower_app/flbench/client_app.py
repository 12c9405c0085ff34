"""The device side for the anchor: the same numpy trainer and Dirichlet shard as the FleetGrid run."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from agent.federated import trainer
from bench.federated.accuracy import dirichlet, load

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    pid, parts = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    xtr, ytr, _, _ = load()
    idx = dirichlet(ytr, parts, 0.3, np.random.default_rng(0))[pid]
    arrays = msg.content["arrays"]
    w = [arrays["w"].numpy(), arrays["b"].numpy()]
    new, _ = trainer.train(w, xtr[idx], ytr[idx], trainer.TrainParams(lr=0.5, epochs=1, batch_size=16))
    out = ArrayRecord({"w": Array(new[0]), "b": Array(new[1])})
    return Message(
        RecordDict({"arrays": out, "metrics": MetricRecord({"num-examples": len(idx)})}), reply_to=msg
    )
