"""On-device federated learning: numpy trainer, bounded sample store, DP ledger, secure aggregation.

Never imports flwr; torch only inside `torch_trainer` (the optional `train` extra, chosen with
`[federated] trainer = "torch"`). `client.FederatedClient` is the one object the daemon runs.
"""
