from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.inproc import LiveServer, live, prepare


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[LiveServer]:
    settings, tokens = prepare(tmp_path / "srv", database_url, device_max_messages_per_s=20, device_burst=40)
    yield from live(settings, tokens)
