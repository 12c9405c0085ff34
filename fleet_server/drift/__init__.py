"""Fleet-side drift: telemetry observer, tables, cohort judgement, REST, CLI and the policy hook.

Entry points: observer.drift_observer (IngestWriter observer), routes.router (REST under /api/v1),
cli.register (operator CLI group), policy.drift_policy (the federated loop's hook). Nothing is
imported here so the operator CLI stays free of the server stack.
"""
