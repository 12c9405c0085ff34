"""`edgeloop`: the operator CLI over the REST API. Owns the program: global options, the command
tree (each domain's `register` adds its group), shell completion, and turning every failure into
one line on stderr and an exit code (cliapi.CliExit) instead of a traceback.

Commands live by domain: devices, fleet and whoami in crud/cli.py, bootstrap and operator tokens
in crud/tokens_cli.py, then drift, release/keys (ota), fl, models, audit and rollout in their
packages' cli.py, `replicas` in coordination/cli.py, and `config show` in cliconfig.py (which also
resolves server, token and CA).
Human output is a rich table; `--json` (before or after the command) prints the API's JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import shtab
from rich.console import Console

from fleet_server import cliconfig
from fleet_server.audit.cli import register as register_audit
from fleet_server.cliapi import (
    EXIT_CODES_HELP,
    STREAMED,
    Api,
    ApiError,
    ApiTimeoutError,
    CliError,
    CliExit,
    UsageError,
)
from fleet_server.coordination.cli import register as register_replicas
from fleet_server.crud.cli import register as register_devices
from fleet_server.crud.tokens_cli import register as register_tokens
from fleet_server.drift.cli import register as register_drift
from fleet_server.federated.cli import register as register_fl
from fleet_server.ota.cli import register as register_ota
from fleet_server.registry.cli import register as register_models
from fleet_server.rollouts.cli import register as register_rollouts

__all__ = ["Api", "ApiError", "ApiTimeoutError", "CliExit", "build_parser", "main"]

EPILOG = f"""settings (each: flag > environment > config file > default):
  server   --server   EDGELOOP_SERVER   `server`   (default {cliconfig.DEFAULT_SERVER})
  token    --token    EDGELOOP_TOKEN    `token`
  CA file  --ca-file  EDGELOOP_CA_FILE  `ca_file`  (a private CA for an https server)
  config file: --config, else $EDGELOOP_CONFIG, else ~/.config/edgeloop/config.toml; it must be
  chmod 600 when it holds a token. `edgeloop config show` prints the effective settings.

{EXIT_CODES_HELP}"""


def completion(api: Any, ns: argparse.Namespace, console: Console) -> Any:
    print(shtab.complete(build_parser(), shell=ns.shell), end="")
    return STREAMED


def _leaves(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in {id(c): c for c in action.choices.values()}.values():  # aliases: once
                if child.get_default("func") is not None:
                    yield child
                yield from _leaves(child)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeloop",
        description="edgeloop fleet operator CLI",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--server", help="fleet server URL, e.g. https://fleet.example.com")
    parser.add_argument("--token", help="operator token (op_...); prefer the environment or config file")
    parser.add_argument("--ca-file", dest="ca_file", help="CA certificate (PEM) for an https server")
    parser.add_argument("--config", help="config file (TOML: server, token, ca_file)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--idle-timeout",
        dest="idle_timeout_s",
        type=float,
        default=float(os.environ.get("EDGELOOP_TIMEOUT_S", "30")),
        help="seconds without progress (nothing sent or received) before a request fails (default 30)",
    )
    sub = parser.add_subparsers(dest="group", required=True)
    register_devices(sub)
    register_tokens(sub)
    register_drift(sub)
    register_ota(sub)
    register_fl(sub)
    register_models(sub)
    register_audit(sub)
    register_rollouts(sub)
    register_replicas(sub)
    cliconfig.register(sub)
    p = sub.add_parser("completion", help="print the shell completion script")
    p.add_argument("shell", choices=["bash", "zsh", "tcsh"])
    p.set_defaults(func=completion, local=True)
    for leaf in _leaves(parser):
        # `edgeloop devices list --json` as well as `edgeloop --json devices list`
        leaf.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="JSON output")
    return parser


def _fail(ns: argparse.Namespace, code: CliExit, message: str, **extra: Any) -> int:
    print(f"edgeloop: {message}", file=sys.stderr)
    if getattr(ns, "json", False):
        body = {"exit_code": int(code), "error": code.name.lower(), "message": message, **extra}
        print(json.dumps(body), file=sys.stderr)
    return int(code)


def _run(ns: argparse.Namespace, console: Console) -> Any:
    if getattr(ns, "local", False):
        return ns.func(None, ns, console)
    settings = cliconfig.resolve(ns, os.environ)
    ns.settings, ns.server, ns.token, ns.ca_file = settings, settings.server, settings.token, settings.ca_file
    tls = {"ca_file": settings.ca_file} if settings.ca_file else {}
    api = Api(settings.server, settings.token, timeout_s=ns.idle_timeout_s, **tls)
    return ns.func(api, ns, console)


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)  # a usage error exits 2 here (argparse)
    console = Console()
    try:
        result = _run(ns, console)
    except UsageError as err:
        return _fail(ns, CliExit.USAGE, err.message.removeprefix("edgeloop: "))
    except ApiError as err:
        return _fail(ns, err.exit_code, str(err), status=err.status, detail=err.detail)
    except ConnectionError as err:  # refused, DNS, TLS, idle timeout (ApiTimeoutError)
        return _fail(ns, CliExit.UNREACHABLE, str(err))
    except CliError as err:
        return _fail(ns, err.code, str(err))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as err:
        return _fail(ns, CliExit.USAGE, f"{err.strerror}: {err.filename}")
    except KeyboardInterrupt:
        return _fail(ns, CliExit.INTERRUPTED, "interrupted")
    except Exception as err:
        if os.environ.get("EDGELOOP_DEBUG"):
            raise
        what = f"unexpected error {type(err).__name__}: {err} (EDGELOOP_DEBUG=1 shows the traceback)"
        return _fail(ns, CliExit.UNEXPECTED, what)
    if ns.json and result is not STREAMED:
        print(json.dumps(result, indent=None))
    return int(CliExit.OK)


if __name__ == "__main__":
    sys.exit(main())
