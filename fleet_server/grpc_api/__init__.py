"""gRPC endpoints: enrollment (server TLS) and Sync (mutual TLS). The only server code importing *_pb2."""
