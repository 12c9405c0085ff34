"""Fleet simulator (issue 15): thousands of light simulated devices driving a real fleet server
through the real device protocol (gRPC Sync streams and MQTT), for the scale and rollout benches.

Command line::

    python -m bench.fleet_sim --server http://127.0.0.1:8080 --token ADMIN_TOKEN --devices 5000 \\
        --transport grpc|mqtt|mixed --ramp-per-s 200 --connect-timeout-s 10 --heartbeat-s 60 \\
        --telemetry-per-min 1 --churn-per-min 0 --drop-rate 0 --delay-ms 0 --storm-at-s 120 \\
        --update good=1 --duration-s 300 --identities .fleet_sim/ids --workers 2 --json out.json

Python API (stable; the scale bench drives it)::

    from bench.fleet_sim import FleetSim, SimConfig

    cfg = SimConfig(server="http://127.0.0.1:8080", token=admin_token, devices=5000,
                    transport="grpc", heartbeat_s=60, duration_s=300,
                    identities=Path(".fleet_sim/ids"))
    stats = FleetSim(cfg).run()             # blocking: enroll (cached) -> ramp -> hold -> stop

    sim = FleetSim(cfg)
    sim.start()                             # enroll, spawn workers, ramp; returns at once
    sim.wait_connected(timeout_s=300)       # True when every device holds a session
    snap = sim.stats()                      # live SimStats snapshot (aggregated over workers)
    sim.storm()                             # every device drops its connection now
    final = sim.stop()                      # clean close; final SimStats

`SimConfig` (config.py) has one field per command-line flag (`SimConfig.from_args(argv)`);
the server's device endpoints default to what the server announces (enrollment response's
`sync_endpoint`, the CA under the REST API), override with `grpc_target`, `enroll_target`,
`mqtt_url`.

`SimStats` (stats.py), a dataclass, `.to_dict()` for JSON:

- `devices`, `connected` (now), `reconnecting` (now), `peak_connected`
- `time_to_all_connected_s`: from start until every device first held a session (None if never)
- `reports_sent`, `reports_acked`, `records_sent`, `records_acked`, `records_resent`,
  `duplicates_acked` (acks for a seq the device already had acked), `records_rejected`
- `connects`, `reconnects`, `connect_failures`, `rejected_sessions`
- `report_ack_ms`, `telemetry_ack_ms`: {"p50", "p95", "p99", "max", "count"} (send -> ack)
- `recoveries`: one per outage (storm, server restart): {"cause": "storm"|"outage", "at_s",
  "dropped_to", "all_back_s"} — time until every device is connected again
- `timeline`: one sample per second: {"t_s", "connected", "reconnecting", "records_sent",
  "records_acked", "report_p99_ms", "telemetry_p99_ms"}
- `per_device`: {device_id: {"transport", "seq_first", "seq_last", "acked"}} — every telemetry
  seq the device sent is in [seq_first, seq_last], consecutive; seqs are time-based per run
  (run start ms * 1000 + n), so runs against the same server data never collide on (device, seq)

Modules by domain: link.py (Link contract), grpc_link.py / mqtt_link.py (transports),
config.py, enroll.py (enrollment + identity cache), device.py (one device's loop), faults.py
(drops, delays, storms, churn), backoff.py, stats.py, worker.py (one process, one loop),
run.py (FleetSim: workers + aggregation), __main__.py (CLI, rich progress).
"""
