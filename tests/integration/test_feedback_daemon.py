"""The composition root wires Feedback to the federated sample store: a real `edgeloop-agent run`
(enrolled with a real `edgeloop-server`) serving the digits model takes `edgeloop-agent feedback`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np

from agent.federated.store import SampleStore
from agent.profile import load_profile
from agent.serving.background import BackgroundService
from agent.serving.server import InferenceService
from tests.fixtures.models import digits_models
from tests.helpers.procs import BIN, AgentProc, ServerProc, wait_until


def _preinstall(slots_root: Path, artifact: Path) -> None:
    """Put the model in the device's `current` slot, as a finished OTA update leaves it."""
    service = InferenceService(slots_root, load_profile("generic-x86"), slots_root.parent / "setup.sock")
    with BackgroundService(service) as bg:
        bg.call(lambda: bg.service.install(artifact, name="digits", version="1"))


def test_running_agent_stores_cli_feedback_in_its_sample_store(tmp_path: Path) -> None:
    models = digits_models()
    server = ServerProc(tmp_path / "server")
    server.init()
    server.start()
    agent = AgentProc("dev-fb", tmp_path / "dev-fb", server)
    try:
        agent.data_dir.mkdir()
        assert agent.enroll(server.bootstrap_token()).returncode == 0
        _preinstall(agent.data_dir / "models", models.onnx_fp32)
        agent.start()
        wait_until((agent.data_dir / "inference.sock").exists, 60, what="inference socket")
        x, y = models.data.x_test[:300], models.data.y_test[:300]
        np.savez(tmp_path / "labelled.npz", x=x, y=y)
        out = subprocess.run(
            [BIN / "edgeloop-agent", "feedback", "--npz", str(tmp_path / "labelled.npz"), "--json"],
            env=agent.env(),  # no --socket: found from the agent's own config
            capture_output=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr.decode()
        summary = json.loads(out.stdout)
        assert (summary["accepted"], summary["batches"], summary["stored_total"]) == (300, 2, 300)
        assert summary["feature_source"] == "input" and summary["model_name"] == "digits"
    finally:
        if agent.proc is not None:
            assert agent.stop() == 0
        server.stop()
    store = SampleStore(agent.data_dir / "federated" / "samples.db")
    stored_x, stored_y = store.load()
    store.close()
    assert np.array_equal(stored_x, x.reshape(300, 64)) and np.array_equal(stored_y, y)
