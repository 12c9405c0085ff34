"""A singleton's holder process is SIGKILLed: another replica's Singleton runs the job within
ttl + poll (PostgreSQL; the defaults a replica uses: ttl 6 s, poll 1 s). Prints the takeover time."""

from __future__ import annotations

import signal
import statistics
import subprocess
import sys
import threading
import time

import pytest
from sqlalchemy import Engine

from fleet_server.coordination.leases import LeaseGrant, LeaseStore, Singleton
from tests.integration.coordination.test_leases_pg import ROOT

pytestmark = pytest.mark.postgres

TTL_S, POLL_S = 6.0, 1.0
SLACK_S = 2.0  # a claim's own latency on a loaded 2-core box


def takeover_after_sigkill(engine: Engine, rep: int, delay_s: float = 0.0) -> tuple[float, LeaseGrant, int]:
    """Seconds from SIGKILL of the holder to `on_acquired` here; the grant; the child's token.
    `delay_s` shifts the kill against the holder's renew cycle (every ttl/3)."""
    url = engine.url.render_as_string(hide_password=False)
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.coordination._child",
         "hold", url, "job", f"child-{rep}", str(TTL_S)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    acquired: list[tuple[float, LeaseGrant]] = []
    got = threading.Event()
    single = Singleton(LeaseStore(engine), "job", f"parent-{rep}", ttl_s=TTL_S, poll_s=POLL_S,
                       on_acquired=lambda g: (acquired.append((time.monotonic(), g)), got.set()),
                       on_lost=lambda: None)  # fmt: skip
    try:
        assert child.stdout is not None
        line = child.stdout.readline().split()
        assert line[0] == "held", line
        single.start()
        assert not got.wait(POLL_S * 2.5 + delay_s), "claimed a lease another live replica holds"
        child.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        child.wait(10)
        assert got.wait(TTL_S + POLL_S + SLACK_S + 5)
        at, grant = acquired[0]
        return at - killed_at, grant, int(line[1])
    finally:
        single.stop()
        if child.poll() is None:
            child.kill()
            child.wait()


def test_a_killed_holders_job_moves_to_another_replica_within_ttl_plus_poll(pg_engine: Engine) -> None:
    seconds, grant, child_token = takeover_after_sigkill(pg_engine, 0)
    print(f"\nsingleton takeover after SIGKILL: {seconds:.2f} s (ttl {TTL_S} s, poll {POLL_S} s)")
    assert grant.token == child_token + 1
    assert seconds <= TTL_S + POLL_S + SLACK_S


@pytest.mark.slow
def test_takeover_time_over_five_kills(pg_engine: Engine) -> None:
    times, tokens = [], []
    for rep in range(5):  # kills spread over the holder's renew cycle
        seconds, grant, child_token = takeover_after_sigkill(pg_engine, rep, delay_s=rep * TTL_S / 3 / 5)
        assert grant.token == child_token + 1
        times.append(seconds)
        tokens.append(grant.token)
    print(
        f"\nsingleton takeover after SIGKILL, {len(times)} reps (ttl {TTL_S} s, poll {POLL_S} s):"
        f" min {min(times):.2f} s, median {statistics.median(times):.2f} s, max {max(times):.2f} s"
        f" [{', '.join(f'{t:.2f}' for t in times)}]"
    )
    assert tokens == sorted(set(tokens))
    assert max(times) <= TTL_S + POLL_S + SLACK_S
