"""edgeloop agent: the on-device daemon (enrollment, Sync, store-and-forward, reconcile).

Stays light: numpy, grpcio, protobuf and the runtime adapters only; never torch, fastapi,
sqlmodel, flwr, `compiler` or `fleet_server`.
"""

__version__ = "0.1.0"
