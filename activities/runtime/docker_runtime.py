"""Docker engine runtime: one container per notebook, found by its deterministic name."""

from __future__ import annotations

from collections.abc import Callable

import docker
import docker.errors
import docker.types
import requests.exceptions

from activities.runtime.base import ContainerState, ImageNotFound, LaunchSpec, RuntimeUnavailable
from domain.gateway import EDITOR_RUN_DIR
from domain.ids import LABEL_PREFIX, container_name

NOTEBOOK_LABEL = LABEL_PREFIX + "notebook"
PROJECT_LABEL = LABEL_PREFIX + "project"
MANAGED_LABEL = LABEL_PREFIX + "managed"
# Which installation and host made a container: several platforms (a test run beside a
# developer's stack) may share one engine, and each reconciles only its own containers.
INSTALLATION_LABEL = LABEL_PREFIX + "installation"
HOST_LABEL = LABEL_PREFIX + "host"
# A warm-pool slot's image (activities/runtime/warm_pool.py).
POOL_LABEL = LABEL_PREFIX + "pool"
CONTAINER_PREFIX = container_name("")

_UNAVAILABLE = (requests.exceptions.ConnectionError, requests.exceptions.Timeout)


def engine_answers(timeout: float = 3.0) -> bool:
    try:
        client = docker.from_env(timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (docker.errors.DockerException, *_UNAVAILABLE):
        return False


class DockerRuntime:
    name = "docker"
    serves_http = True

    def __init__(
        self,
        connect: Callable[[], docker.DockerClient] | None = None,
        *,
        installation: str = "",
        host: str = "",
    ) -> None:
        self._connect = connect or (lambda: docker.from_env(timeout=60))
        self._connected: docker.DockerClient | None = None
        self._scope = {INSTALLATION_LABEL: installation, HOST_LABEL: host}

    @property
    def client(self) -> docker.DockerClient:
        return self._client

    @property
    def scope(self) -> dict[str, str]:
        """The labels that mark this installation's containers on this host."""
        return dict(self._scope)

    @property
    def _client(self) -> docker.DockerClient:
        # Connect lazily: an engine that is down now may be back by the next attempt.
        if self._connected is None:
            try:
                self._connected = self._connect()
            except docker.errors.DockerException as err:
                raise RuntimeUnavailable(f"the Docker engine does not answer: {err}") from err
        return self._connected

    def _get(self, notebook_id: str):
        try:
            return self._client.containers.get(container_name(notebook_id))
        except docker.errors.NotFound:
            return None
        except _UNAVAILABLE as err:
            raise RuntimeUnavailable(f"the Docker engine does not answer: {err}") from err

    @staticmethod
    def _state(container) -> ContainerState:
        state = container.attrs.get("State", {})
        running = bool(state.get("Running"))
        exit_code = None if running or state.get("Status") == "created" else state.get("ExitCode")
        return ContainerState(name=container.name, running=running, exit_code=exit_code)

    def start(self, spec: LaunchSpec) -> ContainerState:
        try:
            existing = self._get(spec.notebook_id)
            if existing is not None:
                status = existing.attrs.get("State", {}).get("Status")
                if status == "running":
                    return self._state(existing)
                if status == "created":
                    existing.start()
                    existing.reload()
                    return self._state(existing)
                # A container left over from an earlier run: this run gets a fresh one.
                existing.remove(force=True)
            try:
                self._client.images.get(spec.image)
            except docker.errors.ImageNotFound:
                raise ImageNotFound(
                    f"image {spec.image} is not on this host: build it with `bash images/build.sh`"
                ) from None
            try:
                kwargs = create_kwargs(spec)
                kwargs["labels"].update(self._scope)
                container = self._client.containers.create(spec.image, **kwargs)
            except docker.errors.APIError as err:
                if err.status_code == 409:  # a concurrent attempt created it first
                    container = self._get(spec.notebook_id)
                    if container is None:
                        raise
                else:
                    raise
            container.start()
            container.reload()
            return self._state(container)
        except _UNAVAILABLE as err:
            raise RuntimeUnavailable(f"the Docker engine does not answer: {err}") from err

    def poll(self, notebook_id: str) -> ContainerState | None:
        container = self._get(notebook_id)
        return None if container is None else self._state(container)

    def stop(self, notebook_id: str, grace_s: float) -> ContainerState | None:
        try:
            container = self._get(notebook_id)
            if container is None:
                return None
            try:
                container.stop(timeout=int(grace_s))
                container.reload()
                state = self._state(container)
                container.remove(force=True)
            except docker.errors.NotFound:
                return None
            return state
        except _UNAVAILABLE as err:
            raise RuntimeUnavailable(f"the Docker engine does not answer: {err}") from err

    def logs(self, notebook_id: str, tail: int = 50) -> str:
        container = self._get(notebook_id)
        if container is None:
            return ""
        return container.logs(tail=tail).decode(errors="replace")

    def log_stream(self, notebook_id: str, tail: int, follow: bool):
        container = self._get(notebook_id)
        if container is None:
            return None
        # The SDK's stream closes its socket on close(), which ends a blocked read.
        return container.logs(stream=True, follow=follow, tail="all" if tail < 0 else tail)

    def managed(self) -> dict[str, str]:
        """This installation's containers on this host (not other platforms' on the engine)."""
        labels = [MANAGED_LABEL, *(f"{k}={v}" for k, v in self._scope.items())]
        try:
            containers = self._client.containers.list(all=True, filters={"label": labels})
        except _UNAVAILABLE as err:
            raise RuntimeUnavailable(f"the Docker engine does not answer: {err}") from err
        found = {
            c.labels[NOTEBOOK_LABEL]: c.labels.get(PROJECT_LABEL, "")
            for c in containers
            if c.labels.get(NOTEBOOK_LABEL)
        }
        # A claimed warm editor keeps the labels of its slot (labels never change): its
        # name says whose it is, and its project is looked up (the empty string).
        for c in containers:
            if c.labels.get(POOL_LABEL) and c.name.startswith(CONTAINER_PREFIX):
                found.setdefault(c.name.removeprefix(CONTAINER_PREFIX), "")
        return found


def create_kwargs(spec: LaunchSpec) -> dict:
    """How a notebook's container is made: its name, limits, GPUs and hardening."""
    labels = {
        MANAGED_LABEL: "true",
        NOTEBOOK_LABEL: spec.notebook_id,
        PROJECT_LABEL: spec.project,
        **spec.labels,
    }
    device_requests = None
    if spec.gpus:
        # Exactly the granted devices, never "any N": two notebooks never share one.
        device_requests = [
            docker.types.DeviceRequest(
                device_ids=list(spec.gpu_ids), capabilities=[["gpu"]], driver="nvidia"
            )
            if spec.gpu_ids
            else docker.types.DeviceRequest(count=spec.gpus, capabilities=[["gpu"]])
        ]
    return dict(
        name=container_name(spec.notebook_id),
        labels=labels,
        environment={
            **spec.env,
            # Exactly the granted GPUs, and none at all for a CPU notebook ("void"), whatever
            # a spec stored before the reserved names may say.
            "NVIDIA_VISIBLE_DEVICES": ",".join(spec.gpu_ids) if spec.gpu_ids else "void",
        },
        network_mode=spec.network,
        user=spec.user,
        mounts=[
            docker.types.Mount(
                target=m.target,
                source=str(m.source),
                type="bind",
                read_only=m.read_only,
            )
            for m in spec.mounts
        ]
        + [docker.types.Mount(target=EDITOR_RUN_DIR, source=str(spec.run_dir), type="bind")],
        nano_cpus=int(spec.cpus * 1e9),
        mem_limit=spec.memory_bytes,
        device_requests=device_requests,
        security_opt=["no-new-privileges"],
        # The editor runs as the notebook's user from its first instruction, on files the
        # host already gave that user: it needs no capability at all.
        cap_drop=["ALL"],
        privileged=False,
        pids_limit=4096,
        init=False,
    )
