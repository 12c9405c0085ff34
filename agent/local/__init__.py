"""In-process serving for apps on the device: the agent's current model, in the app's own process.

`LocalModel` (model.py) is the API; `SlotFollower` (follow.py) watches and verifies the agent's
slots; `SampleSender` (samples.py) feeds the agent's drift monitor through a lossy side channel.
"""

from agent.local.model import LocalModel, LocalPrediction

__all__ = ["LocalModel", "LocalPrediction"]
