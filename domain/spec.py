"""The notebook spec: what a user asks for. Validation here names the offending field."""

from __future__ import annotations

import posixpath
import re
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.config import JsonDict

WORKSPACE = "/workspace"
DEFAULT_TIMEOUT_S = 7 * 24 * 3600

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
_BUCKET = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
_ALIAS = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9._/:-]{0,63}$")
# A notebook's labels are one search attribute, a keyword list of key=value terms, whose
# value Temporal caps at 2 KiB (limit.searchAttributesSizeOfValue): past it a create fails
# and a label update terminates the workflow. 64 of these terms with their JSON quotes and
# commas stay under it.
MAX_LABELS_CHARS = 1800
# What check_labels accepts, for the OpenAPI document (json_schema_extra of a labels map).
LABELS_SCHEMA: JsonDict = {
    "description": f"at most 64 labels, and {MAX_LABELS_CHARS} characters of key=value in all",
    "maxProperties": 64,
    "propertyNames": {"pattern": _LABEL_KEY.pattern},
    "additionalProperties": {"type": "string", "pattern": _LABEL_VALUE.pattern},
}
# One `key=value` of a label selector in a query (?label=team=a).
LABEL_SELECTOR_PATTERN = f"{_LABEL_KEY.pattern.removesuffix('$')}={_LABEL_VALUE.pattern[1:]}"
# Variables the platform sets for the editor: a user must not be able to override them.
# (Checked by NotebookSpec itself; the rest of the reserved environment below is checked by
# env_problem at the API and at launch, not by the model, so that specs stored before a
# name was reserved still load from workflow histories.)
RESERVED_ENV_PREFIX = "AINB_"

# The environment a notebook's env_vars may not set, in one place. Compared without regard
# to case. A notebook runs hostile code, but these are read before any of it runs: by the
# container runtime, the images' entrypoints (images/*/ainb-editor), the editors, or the
# dynamic loader of every process, so setting them would break or bypass what the
# platform relies on (GPU isolation, the editor's authentication and listen address, its
# directories outside /workspace, the offline gallery), not only the user's own code.
RESERVED_ENV_PREFIXES: dict[str, str] = {
    "AINB_": "the platform's contract with the editor (port, token, base URL, ids)",
    "NVIDIA_": "read by the NVIDIA container runtime: which GPUs and driver features",
    "JUPYTER_": "JupyterLab's token and its config, data and runtime directories",
    "VSCODE_": "read by code-server and VS Code's server",
    "CODE_SERVER_": "read by code-server",
    "LD_": "the dynamic loader (LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT): hijacks every process",
    "XDG_": "where code-server keeps its state, outside /workspace",
    "TINI_": "read by tini, the containers' init process",
}
RESERVED_ENV_NAMES: dict[str, str] = {
    "CUDA_VISIBLE_DEVICES": "the GPUs the platform granted",
    "PASSWORD": "code-server's password: the notebook's token",
    "HASHED_PASSWORD": "code-server's password: the notebook's token",
    "EXTENSIONS_GALLERY": "code-server's gallery, switched off by the image",
    "HOME": "set by the image and the entrypoint, outside /workspace",
    "PATH": "the image's interpreter and tools",
    "SHELL": "set by the image (code-server's terminals)",
    "USER": "set by the image: the user the editors run as",
    "VIRTUAL_ENV": "the image's Python environment",
    "IPYTHONDIR": "IPython's directory, outside /workspace",
    "PYTHONHOME": "moves the interpreter's standard library: the editor cannot start",
    "PYTHONPLATLIBDIR": "moves the interpreter's standard library: the editor cannot start",
    "NODE_OPTIONS": "code-server's node (--require, --inspect opens a debugger port)",
    "GCONV_PATH": "loads code into every process that converts characters",
    "GLIBC_TUNABLES": "changes the C library of every process",
    "BASH_ENV": "run by the bash entrypoint before it starts the editor",
    "ENV": "run by shells at start",
    "SHELLOPTS": "changes how the bash entrypoint runs",
    "BASHOPTS": "changes how the bash entrypoint runs",
}
# Bounds of env_vars: how many, and their total size (name, '=', value and a NUL each, in
# UTF-8 bytes, as they take room in the container's environment).
MAX_ENV_VARS = 64
MAX_ENV_BYTES = 32 * 1024


class Editor(StrEnum):
    JUPYTERLAB = "jupyterlab"
    VSCODE = "vscode"

    @property
    def ready_path(self) -> str:
        """A path the editor answers (200, or 403 when protected) once it serves, relative
        to its base path (domain.gateway)."""
        return "healthz" if self is Editor.VSCODE else "api/status"

    @property
    def home_path(self) -> str:
        """Where a person lands, relative to the base path: JupyterLab's UI, code-server's
        root (which opens /workspace)."""
        return "" if self is Editor.VSCODE else "lab"


class Permission(StrEnum):
    RO = "ro"
    RW = "rw"
    RWD = "rwd"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Framework(_Strict):
    id: Annotated[str, Field(min_length=1, max_length=64)]
    version: Annotated[str, Field(min_length=1, max_length=64)] | None = None


class Resources(_Strict):
    # One of cpu and gpu (the other absent or null), as _one_kind checks.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "oneOf": [
                {"required": [kind], "properties": {kind: {"type": "integer"}}}
                for kind in ("cpu", "gpu")
            ]
        },
    )
    flavor: Annotated[str, Field(min_length=1, max_length=64)]
    cpu: Annotated[int, Field(gt=0)] | None = None
    gpu: Annotated[int, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Resources:
        if (self.cpu is None) == (self.gpu is None):
            raise ValueError("give either cpu or gpu as a positive count, not both and not neither")
        return self

    @property
    def kind(self) -> Literal["cpu", "gpu"]:
        return "gpu" if self.gpu else "cpu"

    @property
    def units(self) -> int:
        return self.gpu or self.cpu or 0


def unicode_text(value: str) -> str:
    """Refuse a lone surrogate, which JSON can carry (\\ud800) but no UTF-8 text (workflow
    payloads, paths, S3 keys) can."""
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


def normalize_mount_path(value: str) -> str:
    """Return the canonical mount path, refusing anything that is not strictly under /workspace."""
    unicode_text(value)
    if not value.startswith("/"):
        raise ValueError(f"must be an absolute path under {WORKSPACE}, got {value!r}")
    if any(part in ("..", ".") for part in value.split("/")):
        raise ValueError(f"must not contain '.' or '..' segments, got {value!r}")
    if "\x00" in value or "\\" in value:
        raise ValueError("must not contain NUL or backslash characters")
    norm = posixpath.normpath(value)
    if not norm.startswith(WORKSPACE + "/"):
        raise ValueError(f"must be under {WORKSPACE}/ (and not {WORKSPACE} itself), got {value!r}")
    return norm


class Volume(_Strict):
    bucket: Annotated[str, Field(pattern=_BUCKET)]
    alias: Annotated[str, Field(pattern=_ALIAS)]
    prefix: str = ""
    mount_path: str
    permission: Permission = Permission.RO
    cache: bool = False

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        value = unicode_text(value).strip("/")
        if any(part in ("..", ".") for part in value.split("/") if part) or "//" in value:
            raise ValueError(
                f"must be a plain key prefix without '.', '..' or empty segments, got {value!r}"
            )
        return value

    @field_validator("mount_path")
    @classmethod
    def _mount_path(cls, value: str) -> str:
        return normalize_mount_path(value)

    @property
    def relative_mount(self) -> str:
        """The mount path relative to /workspace, as the workspace sync excludes it."""
        return self.mount_path[len(WORKSPACE) + 1 :]

    @property
    def pushed(self) -> bool:
        return self.permission in (Permission.RW, Permission.RWD)

    @staticmethod
    def fields_from_string(text: str) -> dict[str, object]:
        """Split ``bucket@alias[/prefix]:/workspace/path[:ro|rw|rwd][:cache|no-cache]``."""
        parts = text.split(":")
        if len(parts) < 2 or len(parts) > 4:
            raise ValueError(
                "volume string must look like bucket@alias/prefix:/workspace/path:ro|rw|rwd:cache|no-cache"
            )
        source, mount = parts[0], parts[1]
        if "@" not in source:
            raise ValueError(
                f"volume source {source!r} must be bucket@alias or bucket@alias/prefix"
            )
        bucket, _, rest = source.partition("@")
        alias, _, prefix = rest.partition("/")
        permission, cache = "ro", False
        for option in parts[2:]:
            if option in ("ro", "rw", "rwd"):
                permission = option
            elif option in ("cache", "no-cache"):
                cache = option == "cache"
            else:
                raise ValueError(
                    f"unknown volume option {option!r}: use ro, rw, rwd, cache or no-cache"
                )
        return {
            "bucket": bucket,
            "alias": alias,
            "prefix": prefix,
            "mount_path": mount,
            "permission": permission,
            "cache": cache,
        }


class NotebookSpec(_Strict):
    name: Annotated[str, Field(pattern=_NAME)]
    editor: Editor = Editor.JUPYTERLAB
    framework: Framework
    resources: Resources
    volumes: list[Volume] = Field(default_factory=list, max_length=32)
    env_vars: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict, json_schema_extra=LABELS_SCHEMA)
    timeout: Annotated[int, Field(ge=60, le=30 * 24 * 3600)] = DEFAULT_TIMEOUT_S
    timeout_auto_restart: bool = False
    unsecure_http: bool = False

    @field_validator("volumes", mode="before")
    @classmethod
    def _volume_strings(cls, value: object) -> object:
        if isinstance(value, list):
            return [Volume.fields_from_string(v) if isinstance(v, str) else v for v in value]
        return value

    @field_validator("volumes")
    @classmethod
    def _distinct_mounts(cls, volumes: list[Volume]) -> list[Volume]:
        for i, a in enumerate(volumes):
            for b in volumes[i + 1 :]:
                if a.mount_path == b.mount_path:
                    raise ValueError(f"two volumes share the mount path {a.mount_path}")
                for outer, inner in ((a, b), (b, a)):
                    if inner.mount_path.startswith(outer.mount_path + "/"):
                        raise ValueError(
                            f"mount path {inner.mount_path} is nested inside {outer.mount_path}"
                        )
        return volumes

    @field_validator("env_vars")
    @classmethod
    def _env(cls, env: dict[str, str]) -> dict[str, str]:
        for key, value in env.items():
            if not _ENV_KEY.match(key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
            if key.upper().startswith(RESERVED_ENV_PREFIX):
                raise ValueError(f"{key!r}: names starting with {RESERVED_ENV_PREFIX} are reserved")
            if "\x00" in value:
                raise ValueError(f"value of {key!r} must not contain NUL")
        return env

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        return check_labels(labels)


def reserved_env_reason(name: str) -> str | None:
    """Why ``name`` is reserved (see RESERVED_ENV_NAMES and _PREFIXES), or None."""
    upper = name.upper()
    if upper in RESERVED_ENV_NAMES:
        return RESERVED_ENV_NAMES[upper]
    for prefix, reason in RESERVED_ENV_PREFIXES.items():
        if upper.startswith(prefix):
            return f"names starting with {prefix} are reserved: {reason}"
    return None


def env_problem(env: dict[str, str]) -> tuple[str | None, str] | None:
    """The first thing wrong with a notebook's env_vars, as (variable or None, message),
    or None when they may be set: valid names, no NUL, nothing reserved, within bounds."""
    if len(env) > MAX_ENV_VARS:
        return None, f"at most {MAX_ENV_VARS} variables, got {len(env)}"
    total = 0
    for name, value in env.items():
        if not _ENV_KEY.fullmatch(name):
            return name, (
                f"{name!r} is not a valid environment variable name "
                "(letters, digits and '_', not starting with a digit)"
            )
        if "\x00" in value:
            return name, f"value of {name!r} must not contain NUL"
        reason = reserved_env_reason(name)
        if reason is not None:
            return name, f"{name!r} is reserved ({reason})"
        try:
            size = len(value.encode())
        except UnicodeEncodeError:  # a lone surrogate, which JSON can carry
            return name, f"value of {name!r} must be valid Unicode text"
        total += len(name) + size + 2
    if total > MAX_ENV_BYTES:
        return None, f"at most {MAX_ENV_BYTES} bytes of variables in all, got {total}"
    return None


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    """Label keys and values as search attributes and selectors can carry them."""
    if len(labels) > 64:
        raise ValueError("at most 64 labels")
    for key, value in labels.items():
        if not _LABEL_KEY.fullmatch(key):
            raise ValueError(
                f"label key {key!r} must be 1-63 letters, digits, '.', '_', '-' or '/'"
            )
        if not _LABEL_VALUE.fullmatch(value):
            raise ValueError(
                f"label value {value!r} of {key!r} must be at most 63 plain characters"
            )
    size = sum(len(key) + 1 + len(value) for key, value in labels.items())
    if size > MAX_LABELS_CHARS:
        raise ValueError(f"at most {MAX_LABELS_CHARS} characters of key=value in all, got {size}")
    return labels
