"""The fleet server's MQTT side: the broker configuration (brokerconf.py) and the bridge (bridge.py)."""
