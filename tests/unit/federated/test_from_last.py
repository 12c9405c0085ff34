"""`from_last` with replicas: a run's files live on the disk of the replica that ran it, so a start
on another replica must refuse with the reason (409), never quietly begin from a zero head."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from sqlmodel import Session

from fleet_server.db import make_engine
from fleet_server.errors import ConflictError
from fleet_server.federated.models import FlRun
from fleet_server.federated.routes import RunRequest, _initial
from fleet_server.migrate import upgrade


def test_from_last_reads_this_replicas_files_and_refuses_another_replicas(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    upgrade(engine)
    models = cast(Any, None)  # no registry model named: not consulted
    req = RunRequest(from_last=True, features=4, classes=3)
    with Session(engine) as session:
        fresh, _ = _initial(req, session, tmp_path / "fl", models)  # no completed run: a zero head
        assert float(np.abs(fresh["w"].numpy()).sum()) == 0.0

        session.add(FlRun(id="r1", strategy="fedavg", status="completed", num_rounds=1, runner="replica-b",
                           finished_at=datetime.now(UTC)))  # fmt: skip
        session.commit()
        with pytest.raises(ConflictError, match=r"run r1 is not on this replica .*replica-b"):
            _initial(req, session, tmp_path / "fl", models)

        (tmp_path / "fl" / "r1").mkdir(parents=True)
        w = np.arange(12, dtype=np.float32).reshape(4, 3)
        np.savez(tmp_path / "fl" / "r1" / "final.npz", w=w, b=np.ones(3, np.float32))
        last, _ = _initial(req, session, tmp_path / "fl", models)
        assert np.array_equal(last["w"].numpy(), w)
    engine.dispose()
