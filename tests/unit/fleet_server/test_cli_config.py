"""The operator CLI without a server: settings precedence and the config file's checks
(cliconfig), token masking, the HTTP-status-to-exit-code table, shell completion scripts and
the exit codes in `edgeloop --help`."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from fleet_server import cliconfig, operator_cli
from fleet_server.cliapi import CliError, CliExit, exit_code_for_status

TOKEN = "op_0123456789ab.abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"


def _ns(**flags: str | None) -> argparse.Namespace:
    base = {"server": None, "token": None, "ca_file": None, "config": None}
    return argparse.Namespace(**{**base, **flags})


def _write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_each_setting_takes_flag_then_environment_then_file_then_default(tmp_path: Path) -> None:
    cfg = _write(tmp_path / "c.toml", f'server = "https://file"\ntoken = "{TOKEN}"\nca_file = "ca.pem"\n')
    env = {"EDGELOOP_CONFIG": str(cfg)}
    s = cliconfig.resolve(_ns(), env)
    assert (s.server, s.token, s.ca_file) == ("https://file", TOKEN, str(tmp_path / "ca.pem"))
    assert s.sources == dict.fromkeys(("server", "token", "ca_file"), f"config {cfg}")

    s = cliconfig.resolve(_ns(), {**env, "EDGELOOP_SERVER": "https://env", "EDGELOOP_CA_FILE": "/etc/ca"})
    assert (s.server, s.token, s.ca_file) == ("https://env", TOKEN, "/etc/ca")
    assert s.sources["server"] == "env EDGELOOP_SERVER"

    s = cliconfig.resolve(_ns(server="https://flag", token=""), {**env, "EDGELOOP_SERVER": "https://env"})
    assert (s.server, s.token) == ("https://flag", "")  # an explicit empty --token beats the file
    assert s.sources["server"] == s.sources["token"] == "flag"

    s = cliconfig.resolve(_ns(), {"EDGELOOP_CONFIG": str(tmp_path / "absent.toml")})
    assert (s.server, s.token, s.config_loaded) == (cliconfig.DEFAULT_SERVER, "", False)
    assert s.sources["server"] == "default"


def test_the_default_path_is_under_the_xdg_config_home(tmp_path: Path) -> None:
    assert cliconfig.default_path({"XDG_CONFIG_HOME": str(tmp_path)}) == tmp_path / "edgeloop" / "config.toml"
    assert cliconfig.default_path({"EDGELOOP_CONFIG": "/x/y.toml"}) == Path("/x/y.toml")
    assert cliconfig.default_path({}) == Path.home() / ".config" / "edgeloop" / "config.toml"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_a_token_in_a_file_others_can_read_is_refused_with_the_chmod(tmp_path: Path, mode: int) -> None:
    cfg = _write(tmp_path / "c.toml", f'token = "{TOKEN}"\n', mode)
    with pytest.raises(CliError) as err:
        cliconfig.resolve(_ns(config=str(cfg)), {})
    assert err.value.code == CliExit.USAGE
    assert f"chmod 600 {cfg}" in str(err.value) and f"{mode:04o}" in str(err.value)
    assert TOKEN not in str(err.value)


def test_a_readable_file_without_a_token_is_fine(tmp_path: Path) -> None:
    cfg = _write(tmp_path / "c.toml", 'server = "https://x"\n', 0o644)
    assert cliconfig.resolve(_ns(config=str(cfg)), {}).server == "https://x"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("server = [", "not valid TOML"),
        ('sever = "https://x"\n', "unknown key(s) sever"),
        ("server = 8080\n", "server must be a string"),
        (b"\xff\xfe".decode("latin-1"), "not valid TOML"),
    ],
)
def test_a_bad_config_file_is_a_usage_error_that_names_it(tmp_path: Path, text: str, needle: str) -> None:
    cfg = _write(tmp_path / "c.toml", text)
    with pytest.raises(CliError) as err:
        cliconfig.resolve(_ns(config=str(cfg)), {})
    assert err.value.code == CliExit.USAGE and needle in str(err.value) and str(cfg) in str(err.value)


def test_masking_keeps_the_token_id_and_never_the_secret() -> None:
    masked = cliconfig.mask(TOKEN)
    assert masked.startswith("op_0123456789ab.****") and "abcdefgh" not in masked
    assert cliconfig.mask("") == ""
    assert "secret" not in cliconfig.mask("a-long-secret-without-a-dot")


def test_config_show_prints_masked_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _write(tmp_path / "c.toml", f'server = "https://file"\ntoken = "{TOKEN}"\n')
    monkeypatch.setenv("EDGELOOP_CONFIG", str(cfg))
    monkeypatch.setenv("COLUMNS", "200")
    assert operator_cli.main(["config", "show"]) == 0
    out = capsys.readouterr().out
    assert "https://file" in out and "op_0123456789ab.****" in out and TOKEN not in out


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, CliExit.USAGE), (413, CliExit.USAGE), (422, CliExit.USAGE), (418, CliExit.USAGE),
        (401, CliExit.AUTH), (403, CliExit.AUTH), (404, CliExit.NOT_FOUND),
        (409, CliExit.CONFLICT), (429, CliExit.CONFLICT), (503, CliExit.CONFLICT),
        (502, CliExit.UNREACHABLE), (504, CliExit.UNREACHABLE), (500, CliExit.UNEXPECTED),
    ],
)  # fmt: skip
def test_http_statuses_map_to_what_the_caller_should_do(status: int, code: CliExit) -> None:
    assert exit_code_for_status(status) == code


@pytest.mark.parametrize("shell", ["bash", "zsh", "tcsh"])
def test_completion_prints_a_script_that_knows_the_commands(
    shell: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert operator_cli.main(["completion", shell]) == 0
    script = capsys.readouterr().out
    assert "edgeloop" in script
    for word in ("rollout", "devices", "operator-tokens", "completion"):
        assert word in script, word


def test_help_lists_every_exit_code_and_the_settings(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        operator_cli.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for code in CliExit:
        assert f"\n  {int(code)} " in out, code
    assert "EDGELOOP_CONFIG" in out and "chmod 600" in out


def test_json_is_accepted_after_the_command_too() -> None:
    parser = operator_cli.build_parser()
    assert parser.parse_args(["devices", "list", "--json"]).json is True
    assert parser.parse_args(["--json", "devices", "list"]).json is True
    assert parser.parse_args(["fl", "stop", "run1", "--json"]).json is True
    assert parser.parse_args(["devices", "list"]).json is False
