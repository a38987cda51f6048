"""Where the CLI's settings come from: flag > environment > config file > default."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.config import DEFAULT_PROJECT, DEFAULT_URL, ConfigError, config_path, resolve

NO_FLAGS = {"url": None, "project": None, "token": None}


def _file(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return {"AINB_CLI_CONFIG": str(path)}


def test_defaults_without_anything(tmp_path: Path) -> None:
    config = resolve(NO_FLAGS, {"HOME": str(tmp_path)})
    assert (config.url, config.project, config.token) == (DEFAULT_URL, DEFAULT_PROJECT, None)
    assert DEFAULT_URL == "http://127.0.0.1:8000"  # the API's default port (api/main.py)


def test_each_source_overrides_the_next(tmp_path: Path) -> None:
    env = _file(tmp_path, 'url = "http://file:1"\nproject = "from-file"\ntoken = "t-file"\n')
    assert resolve(NO_FLAGS, env).project == "from-file"
    assert resolve(NO_FLAGS, env).token == "t-file"
    env |= {"AINB_URL": "http://env:2", "AINB_PROJECT": "from-env"}
    config = resolve(NO_FLAGS, env)
    assert (config.url, config.project, config.token) == ("http://env:2", "from-env", "t-file")
    config = resolve({"url": "http://flag:3/", "project": None, "token": "t-flag"}, env)
    assert (config.url, config.project, config.token) == ("http://flag:3", "from-env", "t-flag")


def test_default_file_location_follows_xdg(tmp_path: Path) -> None:
    (tmp_path / "ainb").mkdir()
    (tmp_path / "ainb" / "config.toml").write_text('project = "xdg"\n')
    env = {"XDG_CONFIG_HOME": str(tmp_path), "HOME": "/nonexistent"}
    assert config_path(env) == tmp_path / "ainb" / "config.toml"
    assert resolve(NO_FLAGS, env).project == "xdg"
    home = {"HOME": str(tmp_path)}
    assert config_path(home) == tmp_path / ".config" / "ainb" / "config.toml"


def test_a_url_without_scheme_is_http(tmp_path: Path) -> None:
    assert resolve({**NO_FLAGS, "url": "host:8000"}, {"HOME": str(tmp_path)}).url == (
        "http://host:8000"
    )


def test_the_server_config_variable_is_not_read(tmp_path: Path) -> None:
    # AINB_CONFIG names the server's JSON settings; the CLI must not try to parse it.
    server = tmp_path / "server.json"
    server.write_text('{"data_dir": "/x"}')
    config = resolve(NO_FLAGS, {"HOME": str(tmp_path), "AINB_CONFIG": str(server)})
    assert config.url == DEFAULT_URL


@pytest.mark.parametrize(
    ("text", "words"),
    [("url = ", "config file"), ("project = 3", "project must be a string")],
)
def test_bad_files_are_one_clear_error(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        resolve(NO_FLAGS, _file(tmp_path, text))


def test_a_named_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        resolve(NO_FLAGS, {"AINB_CLI_CONFIG": str(tmp_path / "missing.toml")})
