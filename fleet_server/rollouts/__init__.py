"""Phased rollouts judged on model metrics (issue 12).

Sans-IO core: `states.py` (transition table), `machine.py` (`step`), `planning.py` (targeting and
batch plans), `gates.py` + `verdicts.py` + `histogram_gate.py` + `stats.py` (statistics on metric
sketches), `judge.py` (canary vs control from device window sums). With I/O: `engine.py` (the
coordinator: claim, decide, step, persist, run effects) with `leases.py` (claims with fencing),
`authoring.py` + `targeting.py` (creating rollouts, policies, which devices and releases),
`deciding.py` + `looks.py` (the next event, metric-gate looks), `effects.py` + `deploying.py`
(persisted effects, batch assignment and rollback releases), `rows.py` and `ports.py`; `metrics.py`
(live metric windows from devices), `models.py` (tables), `routes.py` / `schemas.py` (REST),
`cli.py` (`edgeloop rollout`), `wiring.py` (composition).
"""
