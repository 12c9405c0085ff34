"""Phased rollouts judged on model metrics (issue 12).

Built so far, all sans-IO: `states.py` (transition table), `machine.py` (`step`), `planning.py`
(targeting and batch plans), `gates.py` (statistics on metric sketches). The engine, persistence,
routes and CLI come next (ARCHITECTURE.md §5).
"""
