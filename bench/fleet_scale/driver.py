"""One load-generator process of the gRPC scale bench: `count` simulated devices, each its own
mutual-TLS channel and `Sync` stream, paced heartbeats (one DeviceReport every `heartbeat_s`,
each device at its own random phase), staged ramp-up and a per-connection timeout.

The connect timeout bounds TCP + TLS + authentication + the first report's ack (grpc's own
connect deadline is 20 s too).
A device is *connected* once the first report of its session is acked (the server has
authenticated the stream, registered the session and committed the report). When the stream
drops (server killed, stream aborted, ack timeout) it reconnects with the agent's own backoff
(agent/backoff.py: exponential, +/-20 % jitter, reset once a session is up).

Prints one JSON line per `status_s` on stdout:
    {"t": wall, "connected": n, "connects": n, "failures": n, "acked": n, "ack_timeouts": n,
     "lat_ms": [heartbeat ack latencies since the last line], "back": n}
where `back` counts devices connected on a session opened after the wall time written in
`--mark-file` (the orchestrator writes the time it killed the server there).

    python -m bench.fleet_scale.driver --pki DIR --target localhost:PORT --first 0 --count 5000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from agent.backoff import Backoff
from protos.edgeloop.v1 import device_pb2 as pb
from protos.edgeloop.v1 import device_pb2_grpc

OPTIONS = [
    ("grpc.use_local_subchannel_pool", 1),  # one TCP connection per device, like real devices
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.enable_retries", 0),
]


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


@dataclass
class Stats:
    connected: int = 0
    connects: int = 0
    failures: int = 0
    acked: int = 0
    ack_timeouts: int = 0
    why: dict[str, int] = field(default_factory=dict)  # failed session opens by cause

    def failed(self, cause: str) -> None:
        self.failures += 1
        self.why[cause] = self.why.get(cause, 0) + 1


class Device:
    def __init__(self, device_id: str, creds: grpc.ChannelCredentials, args: argparse.Namespace) -> None:
        self.device_id = device_id
        self.creds = creds
        self.args = args
        self.up = False
        self.last_error = "EOF"
        self.session_start = 0.0
        self.seq = 0
        self.backoff = Backoff(initial_s=args.backoff_initial_s, max_s=args.backoff_max_s)
        self.report = pb.DeviceReport(
            device_id=device_id,
            agent_version="fleet-scale-bench",
            profile="generic-x86",
            health=pb.HEALTH_OK,
            resources=pb.Resources(
                cpu_load_1m=0.5,
                mem_total_bytes=4 << 30,
                mem_available_bytes=2 << 30,
                disk_free_bytes=8 << 30,
                temperature_c=48.5,
                uptime_s=3600,
            ),
        )

    def next_report(self) -> pb.SyncRequest:
        self.seq += 1
        self.report.sequence = self.seq
        return pb.SyncRequest(report=self.report)

    async def run(
        self, stats: Stats, lat: list[float], stopping: asyncio.Event, connecting: asyncio.Semaphore
    ) -> None:
        a = self.args
        while not stopping.is_set():
            async with connecting:  # the connect timeout counts from here (see main)
                channel = grpc.aio.secure_channel(a.target, self.creds, options=OPTIONS)
                call = device_pb2_grpc.DeviceServiceStub(channel).Sync()  # type: ignore[no-untyped-call]
                acks: asyncio.Queue[float] = asyncio.Queue()
                reader = asyncio.create_task(self._read(call, acks))
                try:
                    # Session open: connect + TLS + auth + the first report acked, in the timeout.
                    # (Waiting for call.wait_for_connection() before writing, as the agent does,
                    # made every storm attempt at 5,000 devices time out on the loaded box.)
                    await asyncio.wait_for(self._first_ack(call, acks, reader), a.connect_timeout_s)
                    failure = ""
                except grpc.aio.AioRpcError as err:
                    failure = err.code().name
                except ConnectionError as err:
                    failure = str(err)
                except (TimeoutError, asyncio.InvalidStateError) as err:
                    failure = type(err).__name__
                if failure:
                    stats.failed(failure)
                    reader.cancel()
                    await channel.close(None)
            if failure:
                await asyncio.sleep(self.backoff.next_delay())
                continue
            self.up, self.session_start = True, time.time()
            self.backoff.reset()
            stats.connected += 1
            stats.connects += 1
            try:
                await self._heartbeats(call, acks, reader, stats, lat, stopping)
            finally:
                self.up = False
                stats.connected -= 1
                reader.cancel()
                await channel.close(None)
            if not stopping.is_set():
                await asyncio.sleep(self.backoff.next_delay())

    async def _read(self, call: grpc.aio.StreamStreamCall, acks: asyncio.Queue[float]) -> None:
        try:
            while True:
                msg = await call.read()
                if msg is grpc.aio.EOF:
                    break
                if msg.WhichOneof("msg") == "report_ack":
                    acks.put_nowait(time.perf_counter())
        except grpc.aio.AioRpcError as err:
            self.last_error = err.code().name
        except asyncio.CancelledError:
            pass
        acks.put_nowait(-1.0)  # stream gone

    async def _first_ack(
        self, call: grpc.aio.StreamStreamCall, acks: asyncio.Queue[float], reader: asyncio.Task[None]
    ) -> None:
        await call.write(self.next_report())
        if await acks.get() < 0:
            raise ConnectionError(self.last_error)

    async def _heartbeats(
        self,
        call: grpc.aio.StreamStreamCall,
        acks: asyncio.Queue[float],
        reader: asyncio.Task[None],
        stats: Stats,
        lat: list[float],
        stopping: asyncio.Event,
    ) -> None:
        a = self.args
        next_at = time.monotonic() + random.uniform(0, a.heartbeat_s)
        while not stopping.is_set():
            # Sleep until the next heartbeat, but notice at once when the stream drops.
            try:
                ended = await asyncio.wait_for(acks.get(), max(0.0, next_at - time.monotonic()))
                if ended < 0:
                    return
                continue  # a stray ack: ignore
            except TimeoutError:
                pass
            next_at += a.heartbeat_s
            sent = time.perf_counter()
            try:
                await call.write(self.next_report())
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                return
            try:
                got = await asyncio.wait_for(acks.get(), a.ack_timeout_s)
            except TimeoutError:
                stats.ack_timeouts += 1
                return  # treat as a dead link, like an agent would
            if got < 0:
                return
            stats.acked += 1
            lat.append((got - sent) * 1000)


async def main(a: argparse.Namespace) -> None:
    raise_nofile()
    ca = (a.pki / "ca.pem").read_bytes()
    devices = []
    for i in range(a.first, a.first + a.count):
        d = a.pki / "devices" / f"d{i}"
        creds = grpc.ssl_channel_credentials(ca, (d / "key.pem").read_bytes(), (d / "cert.pem").read_bytes())
        devices.append(Device(f"bench-{i:05d}", creds, a))
    stats = Stats()
    lat: list[float] = []
    stopping = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    # Session opens in progress in this process at once. Real devices each have their own CPU;
    # here thousands share two cores, and 2,500 client TLS handshakes started together starve
    # one another past any connect timeout (a storm then never completes: a load-generator
    # artifact, the same cap as bench/fleet_sim's max_connecting).
    connecting = asyncio.Semaphore(a.max_connecting)

    async def ramp() -> None:
        interval = 1.0 / a.ramp_per_s
        start = time.monotonic()
        for n, dev in enumerate(devices):
            tasks.append(asyncio.create_task(dev.run(stats, lat, stopping, connecting)))
            delay = start + (n + 1) * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)

    ramping = asyncio.create_task(ramp())
    loop = asyncio.get_running_loop()
    stdin_closed = loop.run_in_executor(None, sys.stdin.read)  # orchestrator closes stdin: stop
    mark = 0.0
    all_back_at = 0.0
    while not stdin_closed.done():
        await asyncio.wait([stdin_closed], timeout=a.status_s)
        if not mark and a.mark_file and a.mark_file.exists():
            text = a.mark_file.read_text().strip()
            mark = float(text) if text else 0.0
        back = sum(1 for d in devices if d.up and d.session_start > mark) if mark else 0
        if back == len(devices) and not all_back_at:
            all_back_at = max(d.session_start for d in devices)  # the last one's session
        line = {
            "t": time.time(),
            "connected": stats.connected,
            "connects": stats.connects,
            "failures": stats.failures,
            "acked": stats.acked,
            "ack_timeouts": stats.ack_timeouts,
            "why": stats.why,
            "lat_ms": [round(x, 2) for x in lat],
            "back": back,
            "all_back_at": all_back_at,
        }
        lat.clear()
        print(json.dumps(line), flush=True)
    # Closing thousands of channels one by one takes minutes; the process exit closes them all.
    ramping.cancel()
    os._exit(0)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pki", type=Path, required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--ramp-per-s", type=float, default=100.0)
    p.add_argument("--connect-timeout-s", type=float, default=20.0)
    p.add_argument("--ack-timeout-s", type=float, default=30.0)
    p.add_argument("--heartbeat-s", type=float, default=60.0)
    p.add_argument("--max-connecting", type=int, default=100, help="session opens at once per process")
    p.add_argument("--backoff-initial-s", type=float, default=0.5)  # the agent's defaults
    p.add_argument("--backoff-max-s", type=float, default=60.0)
    p.add_argument("--status-s", type=float, default=1.0)
    p.add_argument("--mark-file", type=Path)
    return p.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
