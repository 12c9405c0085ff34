"""Observability of the fleet server: Prometheus metrics (metrics.py, collectors.py), readiness
(ready.py), request ids and REST latency (middleware.py), JSON logs with bound ids (logs.py);
`wiring.install(app)` puts them on an app. Nothing is imported here, so low-level modules
(ingest.py, device_session.py) can import `observability.logs` without cycles."""
