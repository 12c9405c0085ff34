"""Small shared helpers: keep third-party chatter off stdout (so `--json` stays parseable)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Route Python-level prints of converters (torch.onnx, litert-torch) to stderr."""
    with contextlib.redirect_stdout(sys.stderr):
        yield
