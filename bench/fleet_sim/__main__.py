"""`python -m bench.fleet_sim ...`: run a simulated fleet, show progress, print the summary."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence

from bench.fleet_sim.config import SimConfig
from bench.fleet_sim.run import FleetSim
from bench.fleet_sim.stats import SimStats


def _line(s: SimStats) -> str:
    c = s.counters
    rp, tp = s.report_ack_ms.get("p99"), s.telemetry_ack_ms.get("p99")
    return (
        f"t={s.elapsed_s:7.1f}s connected {s.connected}/{s.devices} reconnecting {s.reconnecting} "
        f"reports {c['reports_acked']}/{c['reports_sent']} records {c['records_acked']}/{c['records_sent']} "
        f"dup-acks {c['duplicates_acked']} reconnects {c['reconnects']} p99 report {rp} ms telemetry {tp} ms"
    )


def main(argv: Sequence[str] | None = None) -> int:
    cfg = SimConfig.from_args(argv)
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if cfg.progress and sys.stderr.isatty():
        from rich.live import Live
        from rich.table import Table

        def table(s: SimStats) -> Table:
            t = Table(title=f"fleet-sim: {cfg.devices} devices over {cfg.transport}, {cfg.workers} workers")
            for col in ("t", "connected", "reconnecting", "reports acked", "records acked/sent",
                        "dup acks", "reconnects", "report p99 ms", "telemetry p99 ms"):  # fmt: skip
                t.add_column(col, justify="right")
            c = s.counters
            t.add_row(f"{s.elapsed_s:.0f}s", f"{s.connected}/{s.devices}", str(s.reconnecting),
                      str(c["reports_acked"]), f"{c['records_acked']}/{c['records_sent']}",
                      str(c["duplicates_acked"]), str(c["reconnects"]), str(s.report_ack_ms.get("p99")),
                      str(s.telemetry_ack_ms.get("p99")))  # fmt: skip
            return t

        with Live(refresh_per_second=2, transient=False) as live:
            final = FleetSim(cfg).run(on_tick=lambda s: live.update(table(s)))
    else:
        every = [0]

        def tick(s: SimStats) -> None:
            every[0] += 1
            if every[0] % 10 == 0:
                print(_line(s), file=sys.stderr, flush=True)

        final = FleetSim(cfg).run(on_tick=tick if cfg.progress else None)
    summary = {k: v for k, v in final.to_dict().items() if k not in ("timeline", "per_device")}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
