"""Where the robust defences' per-device reputation lives between rounds: the `fl_reputation` table.

Owns loading a model's book (node id -> reputation) when a run builds its strategy and writing it
back after every round, under the run's lease fence when it has one, so a runner that lost its
lease writes nothing. The book is small (one float per device that ever trained the model), so a
write replaces the model's rows in one transaction. Does not own what a reputation means or how it
moves (defences/reputation.py).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import cast

from sqlalchemy import Engine, delete
from sqlmodel import Session, col, select

from fleet_server.federated.models import FlReputation
from fleet_server.models import utcnow


def load(engine: Engine, model: str) -> dict[Hashable, float]:
    """The model's book as the defences keep it (Flower node id -> reputation)."""
    with Session(engine) as s:
        rows = s.exec(select(FlReputation).where(col(FlReputation.model) == model)).all()
    return {int(r.node_id): float(r.score) for r in rows}


def save(
    engine: Engine,
    model: str,
    book: Mapping[Hashable, float],
    fence: Callable[[Session], None] | None = None,
) -> None:
    """Replace the model's rows with `book`.

    Raises:
        LeaseLost: through `fence`, when the run's runner lost its lease (nothing is written).
    """
    now = utcnow()
    with Session(engine) as s:
        if fence is not None:
            fence(s)
        s.execute(delete(FlReputation).where(col(FlReputation.model) == model))
        s.add_all(
            FlReputation(model=model, node_id=cast(int, k), score=float(v), updated_at=now)  # node ids
            for k, v in book.items()
        )
        s.commit()
