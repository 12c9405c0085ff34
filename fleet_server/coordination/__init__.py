"""Coordination of several fleet-server replicas on one database: leases with fencing tokens for
singleton jobs, the replica heartbeat, device presence derived from the database, and a bus
(PostgreSQL LISTEN/NOTIFY, or in-process) that fans desired-state changes and kicks out to the
replica holding a device's session. Never a home-made cluster: PostgreSQL is the coordinator."""
