"""In-process serving for apps on the device: the agent's current model, in the app's own process.

`LocalModel` (model.py) is the API; `SlotFollower` (follow.py) watches and verifies the agent's
slots; `SampleSender` (samples.py) feeds the agent's drift monitor and `MetricsFlusher` (metrics.py)
its live model metrics (the rollout gates), both through the same lossy side channel.
"""

from agent.local.model import LocalModel, LocalPrediction

__all__ = ["LocalModel", "LocalPrediction"]
