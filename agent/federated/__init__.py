"""On-device federated learning: numpy trainer, bounded sample store, DP ledger, secure aggregation.

Never imports flwr; torch only inside `train_torch` (the optional `train` extra, chosen with
`[federated] trainer = "torch"`). `client.FederatedClient` is the one object the daemon runs.
"""
