"""Transport adapters: the only agent code that imports grpc and the generated *_pb2 modules."""
