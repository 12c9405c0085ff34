"""`edgeloop-agent predict` and `edgeloop-agent models`: inference subcommands for `agent/cli.py`.

Owns argument parsing and printing for the two commands; each talks to the running agent through
`agent.client.EdgeloopClient` (the same API applications use). `add_subcommands()` registers them and
sets ``func`` (and ``handler``): ``Callable[[argparse.Namespace], int]`` returning an exit code, as a parser
default. Does not configure logging or start anything.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np

from agent.errors import AgentError, ExitCode, InvalidInputError

if TYPE_CHECKING:
    from agent.client import EdgeloopClient

SOCKET_ENV = "EDGELOOP_INFERENCE_SOCKET"
DEFAULT_SOCKET = "/run/edgeloop/inference.sock"


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``predict`` and ``models`` on the agent CLI."""
    predict = subparsers.add_parser(
        "predict",
        help="run one input (.npy, or .npz for multi-input models) through the serving model",
        description=(
            "A single-input model takes a .npy array (one sample or a batch, batch first). A model with "
            "several inputs takes an .npz with one array per input, named after it (see `models` or the "
            "signature); inputs the model does not batch (a recurrent state, a 0-d sample rate) are "
            "given whole, e.g. np.savez('in.npz', x=frame, state=state, sr=np.array(16000))."
        ),
    )
    predict.add_argument(
        "--input",
        required=True,
        type=Path,
        help=".npy (single-input model) or .npz (one array per input name) file",
    )
    _common(predict)
    predict.set_defaults(func=run_predict, handler=run_predict)
    models = subparsers.add_parser("models", help="model slots, versions and serving stats")
    _common(models)
    models.set_defaults(func=run_models, handler=run_models)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--socket",
        default=os.environ.get(SOCKET_ENV, DEFAULT_SOCKET),
        help=f"agent inference socket (env {SOCKET_ENV}; default {DEFAULT_SOCKET}) or host:port",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _client(target: str) -> EdgeloopClient:
    from agent.client import EdgeloopClient

    return EdgeloopClient(target if ":" in target and not target.startswith("/") else Path(target))


def run_predict(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    try:
        loaded = np.load(args.input, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                x: np.ndarray | dict[str, np.ndarray] = {k: loaded[k] for k in loaded.files}
        else:
            x = loaded
    except (OSError, ValueError, EOFError) as err:
        print(f"error: cannot read {args.input} as .npy or .npz: {err}", file=sys.stderr)
        return int(ExitCode.USAGE)
    client = _client(args.socket)
    try:
        with client:
            info = client.model_info()
            outputs = client.predict_all(x)
    except InvalidInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return int(ExitCode.USAGE)
    except AgentError as err:
        print(f"error: {err}", file=sys.stderr)
        return int(ExitCode.INFERENCE)
    if args.json:
        payload = {
            "model": info.name,
            "version": info.version,
            "outputs": {name: array.tolist() for name, array in outputs.items()},
        }
        json.dump(payload, out)
        out.write("\n")
        return int(ExitCode.OK)
    out.write(f"model {info.name} version {info.version} ({info.backend})\n")
    for name, array in outputs.items():
        out.write(f"{name} {array.dtype}{list(array.shape)}\n{np.array2string(array, precision=4)}\n")
        if array.ndim == 2 and array.dtype.kind == "f":
            out.write(f"argmax {array.argmax(axis=1).tolist()}\n")
    return int(ExitCode.OK)


def run_models(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    client = _client(args.socket)
    try:
        with client:
            listing = client.list_models()
    except AgentError as err:
        print(f"error: {err}", file=sys.stderr)
        return int(ExitCode.INFERENCE)
    slots = {
        e.slot: {"name": e.name, "version": e.version, "sha256": e.sha256, "reason": e.reason}
        for e in listing.slots
        if e.version
    }
    if args.json:
        json.dump({"serving": listing.serving_version, "slots": slots, "stats": dict(listing.stats)}, out)
        out.write("\n")
        return int(ExitCode.OK)
    out.write(f"serving version: {listing.serving_version or '-'}\n")
    for entry in listing.slots:
        detail = f"{entry.name} {entry.version} sha256:{entry.sha256[:12]}" if entry.version else "(empty)"
        reason = f"  reason: {entry.reason}" if entry.reason else ""
        out.write(f"  {entry.slot:<10} {detail}{reason}\n")
    for key, value in sorted(listing.stats.items()):
        out.write(f"  {key} = {value:.4g}\n")
    return int(ExitCode.OK)
