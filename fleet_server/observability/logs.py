"""Log records that carry the ids of what they are about, as text or as one JSON object per line.

Owns the logging context (request, device, rollout and deployment ids in contextvars, bound with
`log_context(...)`), the JSON formatter and `configure_logging`, which the server's CLI calls once
at start (`EDGELOOP_LOG_FORMAT=json|text`). Does not decide what is logged: modules keep their
`logging.getLogger(__name__)` and their messages; a bound id is added to every record made while
it is bound (asyncio tasks and `asyncio.to_thread`/threadpool calls inherit it).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Final, TextIO

FIELDS: Final = ("request_id", "device_id", "rollout_id", "deployment_id")
FORMATS: Final = ("text", "json")
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s %(message)s"

_VARS: dict[str, ContextVar[str | None]] = {
    name: ContextVar(f"edgeloop_{name}", default=None) for name in FIELDS
}


def bind(**ids: str | None) -> list[tuple[str, Token[str | None]]]:
    """Bind ids in the current context; returns what `unbind` needs. Prefer `log_context`.

    Raises:
        ValueError: a name outside FIELDS (a typo would otherwise be silently dropped).
    """
    unknown = set(ids) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown log context field(s) {sorted(unknown)}; known: {FIELDS}")
    return [(name, _VARS[name].set(value)) for name, value in ids.items()]


def unbind(tokens: list[tuple[str, Token[str | None]]]) -> None:
    for name, token in reversed(tokens):
        _VARS[name].reset(token)


@contextmanager
def log_context(**ids: str | None) -> Iterator[None]:
    """Every record logged inside the block carries these ids (None leaves a field unset)."""
    tokens = bind(**ids)
    try:
        yield
    finally:
        unbind(tokens)


def current() -> dict[str, str]:
    """The ids bound in this context (unset ones omitted)."""
    return {name: value for name, var in _VARS.items() if (value := var.get()) is not None}


class ContextFilter(logging.Filter):
    """Copies the bound ids onto each record (as attributes), so any formatter can use them."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _VARS.items():
            if not hasattr(record, name):
                setattr(record, name, var.get())
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601, ms), level, logger, msg, the bound ids, and
    `exc` (the formatted traceback) when the record has one. Newlines in a message stay inside
    the JSON string, so a message can never forge a second record."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        out: dict[str, object] = {
            "ts": ts.replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is None:
                value = _VARS[name].get()
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def configure_logging(*, level: str = "INFO", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Replace the root logger's handlers with one stream handler in `fmt` ("text" or "json").

    Raises:
        ValueError: `fmt` is not one of FORMATS, or `level` is not a logging level name.
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    logging.getLogger("alembic").setLevel(logging.WARNING)
