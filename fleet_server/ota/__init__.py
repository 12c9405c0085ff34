"""Signed OTA model updates, server side: TUF repository, releases, assignments, device status."""
