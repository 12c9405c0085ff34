"""One agent inference process for the benchmark: serves one artifact on a Unix socket until stdin closes.

Usage: python -m bench.inference.agent_proc ARTIFACT SOCKET SLOTS_DIR [--micro-batch] [--wait-us N]
    [--intra-op-threads N]  (override the profile's runtime threads: a side experiment)
Prints "READY <pid>" once the model is loaded and the sockets listen (gRPC on SOCKET, the framed
fast path on SOCKET with suffix ".fast"). Imports only what the agent
imports (no torch), so its RSS is the agent's.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
from pathlib import Path

import grpc

from agent.inference.engine import ServingOptions
from agent.profile import load_profile
from agent.serving.server import InferenceService
from protos.edgeloop.v1 import inference_pb2 as pb
from protos.edgeloop.v1 import inference_pb2_grpc as pb_grpc


class _Echo(pb_grpc.InferenceServiceServicer):
    """Does nothing: measures the gRPC transport floor."""

    async def Predict(self, request: pb.PredictRequest, context: object) -> pb.PredictResponse:
        return pb.PredictResponse()


async def _echo(socket: Path) -> None:
    server = grpc.aio.server()
    pb_grpc.add_InferenceServiceServicer_to_server(_Echo(), server)
    server.add_insecure_port(f"unix:{socket}")
    await server.start()
    print(f"READY {os.getpid()}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop(0)


async def _main(ns: argparse.Namespace) -> None:
    if ns.echo:
        await _echo(Path(ns.socket))
        return
    profile = load_profile(ns.profile)
    if ns.intra_op_threads:
        runtime = dataclasses.replace(profile.runtime, threads=ns.intra_op_threads)
        profile = dataclasses.replace(profile, runtime=runtime)
    options = ServingOptions(
        micro_batch=ns.micro_batch,
        micro_batch_max=ns.max_batch,
        micro_batch_wait_s=ns.wait_us * 1e-6,
        workers=profile.runtime.threads,
    )
    fast = Path(ns.socket).with_suffix(".fast")
    service = InferenceService(
        Path(ns.slots), profile, Path(ns.socket), options=options, fast_socket_path=fast
    )
    await service.start()
    if service.serving() is None:
        await service.install(Path(ns.artifact), name="bench", version="1")
    print(f"READY {os.getpid()}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes our stdin
    await service.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("artifact")
    parser.add_argument("socket")
    parser.add_argument("slots")
    parser.add_argument("--profile", default="generic-x86")
    parser.add_argument("--micro-batch", action="store_true")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--wait-us", type=float, default=0.0)
    parser.add_argument("--intra-op-threads", type=int, default=0, help="override the profile's threads")
    parser.add_argument("--echo", action="store_true", help="serve an empty servicer (transport floor)")
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
