"""Federated learning on the fleet server: Flower strategies over our device channel.

`grid.FleetGrid` is Flower's `Grid` carried over `edgeloop.v1.FederatedService`; `servicer` is the
gRPC side; `runner` runs a Flower strategy in a worker thread and records rounds; `secagg` and
`privacy` hold secure aggregation and DP accounting; `robust` wraps strategies with norm bounding;
`lifecycle` is a run's states and terminal reasons, `limits` the bounds of every run setting.
"""
