"""Where the CLI's settings come from: flag > environment > config file > default."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from cli.config import (
    DEFAULT_PROJECT,
    DEFAULT_URL,
    EMBEDDED_MARK,
    ConfigError,
    config_path,
    install_embedded,
    read_file,
    resolve,
)

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


# install_embedded: scripts/up points the CLI at the embedded stack with its admin token.


def test_install_embedded_writes_a_private_file_when_there_is_none(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "HOME": "/nonexistent"}
    path, written = install_embedded("http://127.0.0.1:8123", "ainb_admin_s3cret", env)
    assert written and path == tmp_path / "xdg" / "ainb" / "config.toml"
    assert path.read_text().startswith(EMBEDDED_MARK)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds an administrator token
    config = resolve(NO_FLAGS, env)
    assert (config.url, config.project, config.token) == (
        "http://127.0.0.1:8123", DEFAULT_PROJECT, "ainb_admin_s3cret",
    )  # fmt: skip
    assert [p.name for p in path.parent.iterdir()] == ["config.toml"]  # no temporary left


def test_install_embedded_rewrites_its_own_file_keeping_the_project(tmp_path: Path) -> None:
    env = {"AINB_CLI_CONFIG": str(tmp_path / "config.toml")}
    path, _ = install_embedded("http://127.0.0.1:8000", "old-token", env)
    # the user chose a project in the file scripts/up wrote: a new stack keeps it
    path.write_text(path.read_text().replace(f'"{DEFAULT_PROJECT}"', '"team-a"'))
    path.chmod(0o644)
    path, written = install_embedded("http://127.0.0.1:9000", "new-token", env)
    assert written
    assert read_file(path, required=True) == {
        "url": "http://127.0.0.1:9000", "project": "team-a", "token": "new-token",
    }  # fmt: skip
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_install_embedded_leaves_a_users_own_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    mine = 'url = "https://ainb.example"\nproject = "mine"\ntoken = "my-token"\n'
    path.write_text(mine)
    path.chmod(0o640)
    got, written = install_embedded(
        "http://127.0.0.1:8000", "admin", {"AINB_CLI_CONFIG": str(path)}
    )
    assert (got, written) == (path, False)
    assert path.read_text() == mine and stat.S_IMODE(path.stat().st_mode) == 0o640
