"""Flower ServerApp/ClientApp pair used only as the deployment-engine anchor in bench/federated."""
