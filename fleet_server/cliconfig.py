"""Where the operator CLI's server URL, token and CA file come from, and `edgeloop config show`.

Precedence, per setting: flag (`--server`, `--token`, `--ca-file`) > environment
(EDGELOOP_SERVER, EDGELOOP_TOKEN, EDGELOOP_CA_FILE) > config file > default. The config file is
`--config`, else $EDGELOOP_CONFIG, else ~/.config/edgeloop/config.toml (absent is fine):

    server = "https://fleet.example.com"
    token = "op_0123abcd4567.secret"
    ca_file = "ca.pem"        # optional; relative to the config file

A config file that holds a token must not be readable by group or others (refused, with the
chmod to run). Owns reading and checking that file; does not own the REST client (cliapi.py).
"""

from __future__ import annotations

import argparse
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fleet_server.cliapi import CliError, CliExit

DEFAULT_SERVER = "http://127.0.0.1:8080"
KEYS = ("server", "token", "ca_file")
ENV = {"server": "EDGELOOP_SERVER", "token": "EDGELOOP_TOKEN", "ca_file": "EDGELOOP_CA_FILE"}


def default_path(environ: Mapping[str, str]) -> Path:
    if environ.get("EDGELOOP_CONFIG"):
        return Path(environ["EDGELOOP_CONFIG"]).expanduser()
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "edgeloop" / "config.toml"


@dataclass
class CliSettings:
    """The effective settings and where each came from (flag, env NAME, config PATH, default)."""

    server: str = DEFAULT_SERVER
    token: str = ""
    ca_file: str = ""
    config_path: str = ""
    config_loaded: bool = False
    sources: dict[str, str] = field(default_factory=dict)


def load_file(path: Path) -> dict[str, str]:
    """The config file's settings ({} if it does not exist); refuses bad TOML, unknown keys and a
    token in a file others can read."""
    try:
        raw = path.read_bytes()
        mode = path.stat().st_mode
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise CliError(f"cannot read config file {path}: {err}", CliExit.USAGE) from err
    try:
        data: dict[str, Any] = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise CliError(f"config file {path} is not valid TOML: {err}", CliExit.USAGE) from err
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise CliError(
            f"config file {path}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(KEYS)})",
            CliExit.USAGE,
        )
    bad = [k for k, v in data.items() if not isinstance(v, str)]
    if bad:
        raise CliError(f"config file {path}: {', '.join(bad)} must be a string", CliExit.USAGE)
    if data.get("token") and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CliError(
            f"config file {path} holds a token but is readable by group or others "
            f"(mode {stat.S_IMODE(mode):04o}); restrict it with: chmod 600 {path}",
            CliExit.USAGE,
        )
    if data.get("ca_file"):
        ca = Path(data["ca_file"]).expanduser()
        data["ca_file"] = str(ca if ca.is_absolute() else path.parent / ca)
    return dict(data)


def resolve(ns: argparse.Namespace, environ: Mapping[str, str]) -> CliSettings:
    """Flag > environment > config file > default, per setting."""
    path = Path(ns.config).expanduser() if getattr(ns, "config", None) else default_path(environ)
    from_file = load_file(path)
    out = CliSettings(config_path=str(path), config_loaded=path.exists())
    for key in KEYS:
        flag = getattr(ns, key, None)
        if flag is not None:
            value, source = flag, "flag"
        elif environ.get(ENV[key]) is not None:
            value, source = environ[ENV[key]], f"env {ENV[key]}"
        elif key in from_file:
            value, source = from_file[key], f"config {path}"
        else:
            value, source = getattr(CliSettings, key), "default"
        setattr(out, key, value)
        out.sources[key] = source
    if not out.server:
        raise CliError("the server URL is empty (set --server, EDGELOOP_SERVER or `server`)", CliExit.USAGE)
    return out


def mask(token: str) -> str:
    """`op_0123abcd4567.****…wxyz`: the token's kind and id (not secret), never the secret."""
    if not token:
        return ""
    head, dot, secret = token.partition(".")
    if not dot:
        return "****" + (token[-2:] if len(token) > 12 else "")
    return f"{head}.****{secret[-4:] if len(secret) > 16 else ''}"


def config_show(api: Any, ns: argparse.Namespace, console: Console) -> Any:
    s: CliSettings = ns.settings
    rows = {
        "server": s.server,
        "token": mask(s.token),
        "ca_file": s.ca_file,
        "config_file": s.config_path + ("" if s.config_loaded else " (absent)"),
    }
    if ns.json:
        return {**rows, "sources": s.sources}
    table = Table(title="effective settings (flag > environment > config file > default)")
    for col in ("setting", "value", "from"):
        table.add_column(col)
    for key in KEYS:
        table.add_row(key, rows[key] or "-", s.sources[key])
    console.print(table)
    console.print(f"config file: {rows['config_file']}", markup=False, highlight=False)
    return None


def register(sub: Any) -> None:
    """Add the `config` group to the operator CLI's subparsers."""
    group = sub.add_parser("config", help="the CLI's own settings").add_subparsers(
        dest="command", required=True
    )
    p = group.add_parser("show", help="effective server, token (masked), CA file and where each came from")
    p.set_defaults(func=config_show)
