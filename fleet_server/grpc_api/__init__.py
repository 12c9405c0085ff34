"""gRPC endpoints: enrollment (server TLS) and Sync (mutual TLS). Server code importing *_pb2 lives
here, in device_session.py (the transport-neutral Sync logic) and in mqtt/ (the MQTT bridge)."""
