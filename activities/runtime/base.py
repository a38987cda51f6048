"""The container-runtime contract, after jupyterhub's Spawner: start, stop, poll, state.

Every call is idempotent and keyed by the notebook id, so an activity that runs twice
finds what the first run did instead of doing it again (I3).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


class RuntimeUnavailable(Exception):
    """The engine does not answer; worth retrying."""


class ImageNotFound(Exception):
    """The notebook's image is not on this host; retrying will not help."""


@dataclass(frozen=True)
class Mount:
    source: Path
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class LaunchSpec:
    notebook_id: str
    project: str
    image: str
    env: dict[str, str]
    mounts: list[Mount]
    workspace: Path
    # The host directory the editor creates its socket in (bound to EDITOR_RUN_DIR).
    run_dir: Path
    cpus: float
    memory_bytes: int
    gpus: int = 0
    # The GPUs the fleet granted (device ids); the container gets exactly these.
    gpu_ids: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    editor: str = "jupyterlab"
    # The container's network ("none": no interface but its own loopback).
    network: str = "none"
    # uid:gid the editor and all it starts run as.
    user: str = "1000:1000"


class LogStream(Protocol):
    """Blocking chunks of output; close() from another thread ends a blocked read."""

    def __iter__(self) -> Iterator[bytes]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ContainerState:
    name: str
    running: bool
    exit_code: int | None


class ContainerRuntime(Protocol):
    name: str
    # Whether the editor answers HTTP (a simulated host's do not).
    serves_http: bool

    def start(self, spec: LaunchSpec) -> ContainerState:
        """Start the notebook's container, or return the one that already exists."""
        ...

    def poll(self, notebook_id: str) -> ContainerState | None:
        """The container's state, or None when there is none."""
        ...

    def stop(self, notebook_id: str, grace_s: float) -> ContainerState | None:
        """Stop and remove the container; None when there was none (already done)."""
        ...

    def logs(self, notebook_id: str, tail: int = 50) -> str: ...

    def log_stream(self, notebook_id: str, tail: int, follow: bool) -> LogStream | None:
        """The container's output from `tail` lines back (all when negative), and with
        `follow` what it writes next until it exits; None when there is no container."""
        ...

    def managed(self) -> dict[str, str]:
        """Notebook id -> project of this platform's containers on this host, running or not."""
        ...
