"""Signed OTA model updates on the device: TUF client, delta rebuild, crash-safe install machine."""
