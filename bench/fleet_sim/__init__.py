"""Fleet simulator (issue 15): thousands of light simulated devices driving a real fleet server
through the real device protocol (gRPC Sync streams and MQTT), for the scale and rollout benches.

Command line::

    python -m bench.fleet_sim --server http://127.0.0.1:8080 --token ADMIN_TOKEN \
        --ca SERVER_DATA/pki/ca.pem --devices 5000 --transport grpc|mqtt|mixed \
        [--grpc-target 127.0.0.1:7444] [--enroll-target 127.0.0.1:7443] [--mqtt-url mqtts://localhost:8883] \
        --ramp-per-s 200 --connect-timeout-s 10 --heartbeat-s 60 --telemetry-per-min 1 \
        --churn-per-min 0 --drop-rate 0 --delay-ms 0 --storm-at-s 120 --update good=8,silently_bad=2 \
        --duration-s 300 --identities .fleet_sim/identities --workers 2 --json out.json

Python API (stable; the scale bench drives it)::

    from bench.fleet_sim import FleetSim, SimConfig

    cfg = SimConfig(server="http://127.0.0.1:8080", token=admin_token, ca=data_dir / "pki/ca.pem",
                    devices=5000, transport="grpc", heartbeat_s=60, duration_s=300,
                    grpc_target="127.0.0.1:7444", identities=Path(".fleet_sim/identities"))
    stats = FleetSim(cfg).run()             # blocking: enroll (cached) -> ramp -> hold -> stop

    sim = FleetSim(cfg)
    sim.start()                             # enroll (cached), start the workers; returns once started
    sim.wait_connected(timeout_s=300)       # True once every device holds a session at the same time
    snap = sim.stats()                      # live SimStats snapshot (aggregated over the workers)
    sim.storm()                             # every device drops its session now (reconnects w/ backoff)
    final = sim.stop(drain_s=10)            # stop producing, wait for acks, close cleanly; final SimStats

`SimConfig` (config.py) has one field per command-line flag (`SimConfig.from_args(argv)`):
server, token, ca, devices, transport, mqtt_share, enroll_target, grpc_target, mqtt_url,
server_name, mqtt_keepalive_s, ramp_per_s, connect_timeout_s, ack_timeout_s, heartbeat_s,
telemetry_per_min, churn_per_min, churn_offline_s, drop_rate (per device per minute), delay_ms,
storm_at_s, update (mix), update_by_version, metrics_window_s, install_s, backoff_initial_s,
backoff_max_s, duration_s, workers (0 = one per 2,500 devices), identities, id_prefix,
enroll_concurrency, seed, json_out, progress, log_level, max_connecting (TLS handshakes in
progress per worker, default 100: thousands at once on a shared CPU starve each other past any
connect timeout). Device ids are `{id_prefix}-{i:05d}`.
`grpc_target` defaults to the `sync_endpoint` announced at enrollment, `enroll_target` to the
server's host on port 7443; `ca` may be omitted when the identities folder holds one server's.

`SimStats` (stats.py), a dataclass, `.to_dict()` for JSON (what `--json` writes):

- `devices`, `connected` (now), `reconnecting` (now: connecting or backing off), `peak_connected`
- `time_to_all_connected_s`: from start until every device held a session at once (None if never)
- `elapsed_s`, `workers`, `worker_rss_mb` (per worker process, now)
- `counters` (also as attributes, `stats.records_acked`): reports_sent, reports_acked,
  reports_refused, records_sent (produced), records_acked, records_resent, duplicates_acked
  (acks for a seq already acked: it was resent after its first ack was lost), records_rejected,
  connects, reconnects, connect_failures, rejected_sessions, drops, churns, storms,
  installs_committed, installs_failed, windows_sent
- `report_ack_ms`, `telemetry_ack_ms`: {"p50", "p95", "p99", "max", "count"} (send -> ack), all acks
- `held_report_ack_ms`, `held_telemetry_ack_ms`: the same, only acks received while every device
  had been connected for 10 s or more (steady state: no ramp, storm or restart backlog)
- `session_ends`: {cause: count}: "storm", "drop", "churn", "stop", or the gRPC status name /
  link error ("UNAVAILABLE", ...) when the server side ended it
- `recoveries`: one per outage: {"cause": "storm"|"outage", "at_s", "dropped_to", "all_back_s"};
  an outage (a server restart) is noticed when connected falls >10 % below the fleet after all
  were connected; `all_back_s` is the time until every device is connected again
- `timeline`: one sample per second: {"t_s", "connected", "reconnecting", "pending",
  "records_sent", "records_acked", "reports_acked", "report_p99_ms", "telemetry_p99_ms"}
- `per_device` (final stats only): {device_id: {"transport", "seq_first", "seq_last", "acked",
  "pending", "state", "update_kind", "outcomes": {deployment_id: "committed"|"failed"}}};
  the device produced exactly the seqs seq_first..seq_last. Seqs start at
  (run start in ms) * 1000 + 1, so runs against the same server data never collide on (device, seq).

Modules by domain: link.py (Link contract), grpc_link.py / mqtt_link.py (transports),
config.py, enroll.py (enrollment + identity cache), device.py (one device: sessions, outbox,
heartbeats, faults, updates), updates.py (OTA walk and model behaviours, from
tests/helpers/simfleet.py), backoff.py, stats.py, worker.py (one process, one loop), run.py
(FleetSim: workers + aggregation), __main__.py (CLI, rich progress).
"""

from __future__ import annotations

from typing import Any

__all__ = ["FleetSim", "SimConfig", "SimStats"]


def __getattr__(name: str) -> Any:  # lazy: importing bench.fleet_sim.link stays light
    if name == "FleetSim":
        from bench.fleet_sim.run import FleetSim

        return FleetSim
    if name == "SimConfig":
        from bench.fleet_sim.config import SimConfig

        return SimConfig
    if name == "SimStats":
        from bench.fleet_sim.stats import SimStats

        return SimStats
    raise AttributeError(name)
