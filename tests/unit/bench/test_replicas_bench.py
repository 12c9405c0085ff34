"""The replica bench's arithmetic (bench/replicas/stats.py): /proc parsing, CPU deltas over
processes that come and go, the efficiency ratios against one replica, takeover statistics and
the sizing estimate."""

from __future__ import annotations

import os

import pytest

from bench.replicas.stats import cpu_seconds, delta, estimate, parent_pid, summarize, takeover_summary


def _run(n: int, per_cpu: float, net: float, pg_ms: float = 0.4) -> dict[str, float]:
    return {"replicas": n, "persisted_per_s": 600.0, "persisted_per_server_cpu_s": per_cpu,
            "persisted_per_server_cpu_s_net_idle": net, "pg_cpu_ms_per_persisted": pg_ms,
            "idle_cpu_cores_per_replica": 0.01}  # fmt: skip


def test_cpu_seconds_reads_utime_plus_stime_even_with_a_parenthesis_in_the_name() -> None:
    line = "4242 (edge (x) srv) S 17 4242 4242 0 -1 4194560 100 0 0 0 250 150 0 0 20 0 3 0 1 2 3"
    assert cpu_seconds(line, 100) == pytest.approx(4.0)
    assert parent_pid(line) == 17


def test_cpu_seconds_of_this_process_is_what_the_kernel_says() -> None:
    with open(f"/proc/{os.getpid()}/stat") as f:
        mine = cpu_seconds(f.read(), os.sysconf("SC_CLK_TCK"))
    t = os.times()
    assert abs(mine - (t.user + t.system)) < 0.05


def test_delta_keeps_processes_that_ended_and_counts_new_ones_from_zero() -> None:
    before = {1: 10.0, 2: 5.0}
    after = {1: 12.5, 3: 0.75}  # 2 ended (its last sample stands), 3 started
    assert delta(before, after) == pytest.approx(2.5 + 0.0 + 0.75)


def test_summary_ratios_use_medians_and_judge_the_goal_per_replica_count() -> None:
    runs = [_run(1, 1000, 1100), _run(1, 900, 1000), _run(1, 1100, 1200),
            _run(2, 880, 990), _run(2, 860, 950), _run(3, 700, 800)]  # fmt: skip
    s = summarize(runs)
    assert s["1"]["persisted_per_server_cpu_s"]["median"] == 1000
    assert s["2"]["ratio_persisted_per_server_cpu_s_vs_1"] == pytest.approx(0.87)
    assert s["2"]["ratio_persisted_per_server_cpu_s_net_idle_vs_1"] == pytest.approx(970 / 1100, abs=1e-3)
    assert s["2"]["goal_met"] is True and s["3"]["goal_met"] is False and s["1"]["goal_met"] is None
    assert s["3"]["reps"] == 1


def test_summary_without_a_single_replica_run_has_no_ratio() -> None:
    s = summarize([_run(2, 800, 900)])
    assert s["2"]["ratio_persisted_per_server_cpu_s_vs_1"] is None and s["2"]["goal_met"] is None


def test_takeover_summary_per_lease_and_overall() -> None:
    samples = [{"takeover_s": {"tuf-signer": 6.2, "drift-trigger": 6.5}},
               {"takeover_s": {"tuf-signer": 7.1}}, {"takeover_s": {"tuf-signer": 11.0}}]  # fmt: skip
    t = takeover_summary(samples)
    assert t["tuf-signer"] == {"reps": 3, "min": 6.2, "median": 7.1, "max": 11.0, "goal_met": False}
    assert t["drift-trigger"]["goal_met"] is True
    assert t["all"]["reps"] == 4 and t["all"]["goal_met"] is False
    assert takeover_summary([])["all"]["goal_met"] is False  # nothing measured is no pass


def test_estimate_takes_the_larger_of_cpu_and_stream_memory() -> None:
    cpu_bound = estimate(devices=100_000, messages_per_device_per_min=60, server_cpu_s_per_msg=0.001,
                         pg_cpu_s_per_msg=0.0003)  # fmt: skip
    assert cpu_bound["messages_per_s"] == pytest.approx(100_000)
    assert cpu_bound["replicas"] == 167  # 100 cores of work at 0.6 per replica
    assert cpu_bound["pg_cores"] == pytest.approx(50.0)
    streams = estimate(devices=100_000, messages_per_device_per_min=1, server_cpu_s_per_msg=0.001,
                       pg_cpu_s_per_msg=0.0003)  # fmt: skip
    assert streams["replicas"] == 10  # 10,000 streams per replica
    assert estimate(devices=10, messages_per_device_per_min=1, server_cpu_s_per_msg=0.001,
                    pg_cpu_s_per_msg=0.0)["replicas"] == 1  # fmt: skip
