"""On-device federated learning: numpy trainer, bounded sample store, DP ledger, secure aggregation.

Never imports flwr or torch. `client.FederatedClient` is the one object the daemon runs.
"""
