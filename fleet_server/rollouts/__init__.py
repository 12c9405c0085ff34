"""Phased rollouts judged on model metrics (issue 12).

Sans-IO core: `states.py` (transition table), `machine.py` (`step`), `planning.py` (targeting and
batch plans), `gates.py` + `stats.py` (statistics on metric sketches), `judge.py` (canary vs
control from device window sums). With I/O: `engine.py` (claims, decisions, persisted effects),
`metrics.py` (live metric windows from devices), `models.py` (tables), `routes.py` / `schemas.py`
(REST), `cli.py` (`edgeloop rollout`), `wiring.py` (composition).
"""
