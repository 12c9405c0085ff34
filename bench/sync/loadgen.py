"""Load generator: N devices, each its own mutual-TLS channel and Sync stream, closed loop
(send a DeviceReport, wait for its ack, repeat). Prints READY when every stream is open, then
waits for GO on stdin, runs for the window and prints one JSON line with the acked count."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import grpc

from protos.edgeloop.v1 import device_pb2 as pb
from protos.edgeloop.v1 import device_pb2_grpc


async def device(
    device_id: str,
    creds: grpc.ChannelCredentials,
    target: str,
    ready: asyncio.Queue[int],
    go: asyncio.Event,
    stop: list[float],
    counts: list[int],
) -> None:
    async with grpc.aio.secure_channel(target, creds, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
        call = device_pb2_grpc.DeviceServiceStub(ch).Sync()
        await call.wait_for_connection()
        await ready.put(1)
        await go.wait()
        seq = 0
        report = pb.DeviceReport(
            device_id=device_id,
            agent_version="bench",
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
        while time.monotonic() < stop[0]:
            seq += 1
            report.sequence = seq
            await call.write(pb.SyncRequest(report=report))
            while True:
                msg = await call.read()
                if msg is grpc.aio.EOF:
                    return
                if msg.WhichOneof("msg") == "report_ack":
                    break
            if time.monotonic() >= stop[1]:
                counts[0] += 1
        await call.done_writing()


async def main(pki: Path, target: str, first: int, n: int, window_s: float, warmup_s: float) -> None:
    ca = (pki / "ca.pem").read_bytes()
    ready: asyncio.Queue[int] = asyncio.Queue()
    go = asyncio.Event()
    stop = [0.0, 0.0]
    counts = [0]
    tasks = []
    sem = asyncio.Semaphore(50)
    for i in range(first, first + n):
        d = pki / "devices" / f"d{i}"
        creds = grpc.ssl_channel_credentials(ca, (d / "key.pem").read_bytes(), (d / "cert.pem").read_bytes())

        async def start(i: int = i, creds: grpc.ChannelCredentials = creds) -> None:
            async with sem:
                pass
            await device(f"bench-{i:05d}", creds, target, ready, go, stop, counts)

        tasks.append(asyncio.create_task(start()))
        if len(tasks) % 50 == 0:
            await asyncio.sleep(0.05)
    for _ in range(n):
        await ready.get()
    print("READY", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    now = time.monotonic()
    stop[1] = now + warmup_s
    stop[0] = now + warmup_s + window_s
    go.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({"acked": counts[0], "window_s": window_s}), flush=True)


if __name__ == "__main__":
    pki, target, first, n, window, warm = sys.argv[1:7]
    asyncio.run(main(Path(pki), target, int(first), int(n), float(window), float(warm)))
