"""Where the API is and who asks: flag > environment > config file > default.

The file is TOML (``url``, ``project``, ``token`` at top level) at
``$XDG_CONFIG_HOME/ainb/config.toml`` (``~/.config/ainb/config.toml``), or the path in
``AINB_CLI_CONFIG``. Not ``AINB_CONFIG``: the server's processes already read that variable
as the path of their JSON settings, and a shell that runs both must not feed one the other's
file.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# The API's own default (api/main.py: AINB_API_HOST 127.0.0.1, AINB_API_PORT 8000).
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_PROJECT = "default"
KEYS = ("url", "project", "token")


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class Config:
    url: str
    project: str
    token: str | None = None


def config_path(environ: Mapping[str, str]) -> Path:
    explicit = environ.get("AINB_CLI_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME", "~")) / ".config")
    return Path(base).expanduser() / "ainb" / "config.toml"


def read_file(path: Path, *, required: bool) -> dict[str, str]:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        # A default location that does not exist is normal; a path someone named is not.
        if required:
            raise ConfigError(f"config file {path} does not exist") from None
        return {}
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"config file {path}: {err}") from None
    values = {}
    for key in KEYS:
        if key in data:
            if not isinstance(data[key], str):
                raise ConfigError(f"config file {path}: {key} must be a string")
            values[key] = data[key]
    return values


def resolve(flags: Mapping[str, str | None], environ: Mapping[str, str]) -> Config:
    """Each setting from the first source that has it."""
    path = config_path(environ)
    from_file = read_file(path, required=bool(environ.get("AINB_CLI_CONFIG")))
    values: dict[str, str | None] = {}
    for key in KEYS:
        values[key] = (
            flags.get(key) or environ.get(f"AINB_{key.upper()}") or from_file.get(key) or None
        )
    url = (values["url"] or DEFAULT_URL).rstrip("/")
    if "://" not in url:
        url = f"http://{url}"  # `--url host:8000` is what people type
    return Config(url=url, project=values["project"] or DEFAULT_PROJECT, token=values["token"])


EMBEDDED_MARK = "# written by scripts/up (ainb-stack); edit freely, or delete to have it rewritten"


def install_embedded(url: str, token: str, environ: Mapping[str, str]) -> tuple[Path, bool]:
    """Point the CLI at the embedded stack with its administrator token: write the config
    file if there is none, or if scripts/up wrote it (a new data directory, a new port);
    one the user wrote is left alone. (path, whether it was written)."""
    path = config_path(environ)
    try:
        current = path.read_text()
    except FileNotFoundError:
        current = None
    except OSError:
        return path, False
    if current is not None and not current.startswith(EMBEDDED_MARK):
        return path, False
    project = DEFAULT_PROJECT
    if current is not None:
        project = read_file(path, required=False).get("project", DEFAULT_PROJECT)
    text = f'{EMBEDDED_MARK}\nurl = "{url}"\nproject = "{project}"\ntoken = "{token}"\n'
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)  # one a crashed run left may be wider than 0600
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path, True
