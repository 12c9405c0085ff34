"""The agent's local inference API (gRPC over a Unix socket) and the model lifecycle behind it.

`InferenceService` (server.py) is what the daemon constructs; `ModelManager` (models.py) joins the
slots on disk to the serving handle; `codec` is the only module that converts protobuf tensors;
`feedback` takes labelled samples for on-device training (`feedback_client` sends them).
"""

from agent.serving.server import InferenceService

__all__ = ["InferenceService"]
