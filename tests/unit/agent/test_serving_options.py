"""The agent micro-batches at most the size its device class's profile says the compiler judged
quality at (`[serving] micro_batch`); whether it micro-batches at all is the agent's own config."""

from __future__ import annotations

from pathlib import Path

from agent.config import AgentConfig, DeviceConfig, InferenceConfig
from agent.daemon import serving_options
from agent.inference.engine import ServingOptions
from agent.profile import load_profile, profiles_dir

PI = "raspberry-pi-4"


def _config(tmp_path: Path, *, micro_batch: bool) -> AgentConfig:
    device, inference = DeviceConfig(data_dir=str(tmp_path)), InferenceConfig(micro_batch=micro_batch)
    return AgentConfig(device=device, inference=inference)


def test_the_profiles_micro_batch_caps_the_formed_batch(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    text = (profiles_dir() / f"{PI}.toml").read_text()
    (tmp_path / "p" / f"{PI}.toml").write_text(text + "\n[serving]\nmicro_batch = 8\n")
    options = serving_options(_config(tmp_path, micro_batch=True), load_profile(PI, tmp_path / "p"))
    assert options.micro_batch and options.micro_batch_max == 8


def test_without_one_the_agents_default_cap_holds_and_its_config_decides(tmp_path: Path) -> None:
    options = serving_options(_config(tmp_path, micro_batch=False), load_profile(PI))
    assert not options.micro_batch and options.micro_batch_max == ServingOptions().micro_batch_max == 32
