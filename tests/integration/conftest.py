"""The real stack for integration tests: Temporal dev server, SeaweedFS, the control
worker, a host agent on the local Docker engine and the REST API, each a process."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import pytest

from activities.runtime.docker_runtime import (
    MANAGED_LABEL,
    NOTEBOOK_LABEL,
    PROJECT_LABEL,
    engine_answers,
)
from domain.config import JUPYTERLAB_IMAGE, PYTORCH_IMAGES, VSCODE_IMAGE
from domain.ids import container_name
from tests.pg_server import PgServer, server_bin
from tests.support import eventually
from worker.stack import Ports, Stack, free_port

REQUIRE_DOCKER = os.environ.get("AINB_REQUIRE_DOCKER") == "1"

_getaddrinfo = socket.getaddrinfo


def _resolve_localhost_names(host, *args, **kwargs):
    """Names under `localhost` are loopback, as browsers and curl resolve them without
    DNS (RFC 6761): each notebook's origin is `http://{id}.localhost:<port>`. glibc
    only knows `localhost` itself, so this test process does what a browser does."""
    if isinstance(host, str) and host.lower().rstrip(".").endswith(".localhost"):
        host = "127.0.0.1"
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _resolve_localhost_names
MISSING_IMAGE = "ainb/does-not-exist:0"
BAD_KEYS_ALIAS = "badkeys"
BAD_SECRET_KEY = "not-the-right-secret-key-0123456789"
# An API token of the test project: opens its notebooks through the gateway.
PROJECT_API_TOKEN = "it-project-api-token-0123456789"


def _docker_problem() -> str | None:
    if not engine_answers():
        return "no Docker engine answers (start dockerd, or run scripts/test which does)"
    client = docker.from_env()
    try:
        client.images.get(JUPYTERLAB_IMAGE)
    except docker.errors.ImageNotFound:
        return f"image {JUPYTERLAB_IMAGE} is missing: bash images/build.sh"
    finally:
        client.close()
    return None


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    problem = _docker_problem()
    if problem:
        if REQUIRE_DOCKER:
            pytest.fail(f"Docker tests are required (AINB_REQUIRE_DOCKER=1): {problem}")
        pytest.skip(problem)
    client = docker.from_env()
    yield client
    client.close()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One real PostgreSQL for the session; each user takes its own database."""
    if server_bin() is None:
        problem = "no PostgreSQL server: apt-get install postgresql"
        if REQUIRE_DOCKER or os.environ.get("CI"):
            pytest.fail(f"PostgreSQL tests are required: {problem}")
        pytest.skip(problem)
    with PgServer.started() as pg:
        yield pg


@pytest.fixture(scope="session")
def project() -> str:
    return f"it-{uuid.uuid4().hex[:8]}"


# Test stacks' timings: a lost host, a stuck start or a slow stop is seen in seconds. Every
# test stack uses them, so outages and upgrades meet the same platform behaviour.
FAST_TIMINGS = {
    "AINB_HEARTBEAT_TIMEOUT_S": "5",
    "AINB_HOST_PICKUP_TIMEOUT_S": "15",
    "AINB_CHECKPOINT_S": "20",
    "AINB_WORKSPACE_CHECKPOINT_S": "12",
    "AINB_START_SYNC_ATTEMPTS": "3",
    "AINB_STOP_GRACE_S": "10",
}


@pytest.fixture(scope="session")
def stack(tmp_path_factory, docker_client, project) -> Iterator[Stack]:
    ports = Ports.random()
    s = Stack(
        tmp_path_factory.mktemp("ainb"),
        ports,
        runtime="docker",
        extra_env={
            **FAST_TIMINGS,
            # Closed workflows are taken over this often (by the agent and the sweeper).
            "AINB_RECONCILE_INTERVAL_S": "10",
        },
        config_overrides={
            "api_tokens": {project: [PROJECT_API_TOKEN]},
            # An alias whose endpoint nothing listens on: storage that stays unreachable.
            "storage_aliases": {
                "down": {
                    "endpoint": f"http://127.0.0.1:{free_port()}",
                    "access_key": "x",
                    "secret_key": "y",
                },
                # The stack's own S3, with keys it does not know: a user's bad credentials.
                BAD_KEYS_ALIAS: {
                    "endpoint": f"http://127.0.0.1:{ports.s3}",
                    "access_key": "ainbwrongkey0000",
                    "secret_key": BAD_SECRET_KEY,
                },
            },
            "frameworks": {
                "python": {
                    "default_version": "3.11",
                    "versions": {
                        "3.11": {"images": {"jupyterlab": JUPYTERLAB_IMAGE, "vscode": VSCODE_IMAGE}}
                    },
                },
                "pytorch": {
                    "default_version": "2.13",
                    "versions": {"2.13": {"images": dict(PYTORCH_IMAGES)}},
                },
                "broken": {
                    "default_version": "1",
                    "versions": {"1": {"images": {"jupyterlab": MISSING_IMAGE}}},
                },
            },
        },
    )
    try:
        s.start()
        yield s
    finally:
        s.stop()
        for c in docker_client.containers.list(
            all=True, filters={"label": [MANAGED_LABEL, f"{PROJECT_LABEL}={project}"]}
        ):
            c.remove(force=True)


@pytest.fixture(scope="session")
def api(stack: Stack) -> Iterator[httpx.Client]:
    with stack.api_client(timeout=60) as client:
        yield client


@pytest.fixture(scope="session")
def s3(stack: Stack):
    return stack.s3_client()


class Notebooks:
    """REST helpers for one project."""

    def __init__(self, api: httpx.Client, project: str, docker_client: docker.DockerClient) -> None:
        self.api = api
        self.project = project
        self.docker = docker_client
        self.base = f"/v1/projects/{project}/notebooks"

    def post(self, **spec) -> httpx.Response:
        """POST a spec (defaults for name, framework and resources); any answer."""
        body = {
            "name": spec.pop("name", "nb"),
            "framework": spec.pop("framework", {"id": "python"}),
            "resources": spec.pop("resources", {"flavor": "ai1-1-cpu", "cpu": 1}),
            **spec,
        }
        return self.api.post(self.base, json=body)

    def create(self, **spec) -> dict:
        r = self.post(**spec)
        assert r.status_code == 201, r.text
        return r.json()

    def get(self, notebook_id: str) -> httpx.Response:
        return self.api.get(f"{self.base}/{notebook_id}")

    def command(self, notebook_id: str, verb: str) -> httpx.Response:
        return self.api.post(f"{self.base}/{notebook_id}/{verb}")

    def delete(self, notebook_id: str, keep_workspace: bool = False) -> httpx.Response:
        return self.api.delete(
            f"{self.base}/{notebook_id}", params={"keep_workspace": keep_workspace}
        )

    def wait(self, notebook_id: str, *states: str, timeout: float = 120) -> dict:
        seen: list[str] = []
        last: dict = {}

        def reached() -> dict | None:
            nonlocal last
            r = self.get(notebook_id)
            if r.status_code == 404 and "DELETED" in states:
                return {"status": {"state": "DELETED"}}
            assert r.status_code == 200, r.text
            last = r.json()
            state = last["status"]["state"]
            if not seen or seen[-1] != state:
                seen.append(state)
            return last if state in states else None

        return eventually(
            reached,
            timeout=timeout,
            interval=0.2,
            retry_on=(),  # an answer other than 200 fails at once
            what=f"{notebook_id} to reach {states}",
            detail=lambda: f"saw {seen}; last {last.get('status')}",
        )

    def datasync(self, notebook_id: str, **body) -> dict:
        """Ask for a datasync and wait until it is done or failed; its final record."""
        r = self.api.post(f"{self.base}/{notebook_id}/datasync", json=body)
        assert r.status_code == 202, r.text
        job = r.json()["status"]["datasyncs"][-1]
        assert job["state"] in ("queued", "running", "done")

        def finished() -> dict | None:
            jobs = {d["id"]: d for d in self.get(notebook_id).json()["status"]["datasyncs"]}
            return jobs[job["id"]] if jobs[job["id"]]["state"] in ("done", "failed") else None

        return eventually(finished, timeout=90, interval=0.2, what=f"datasync {job} to finish")

    def containers(self, notebook_id: str) -> list:
        """The notebook's containers: by label, and by name (a claimed warm editor keeps
        its slot's labels)."""
        name = container_name(notebook_id)
        found = self.docker.containers.list(
            all=True, filters={"label": f"{NOTEBOOK_LABEL}={notebook_id}"}
        ) + [
            c
            for c in self.docker.containers.list(all=True, filters={"name": name})
            if c.name == name
        ]
        return list({c.id: c for c in found}.values())


@pytest.fixture()
def notebooks(api, project, docker_client) -> Notebooks:
    return Notebooks(api, project, docker_client)


def _command() -> list[str]:
    # The console script of this interpreter's environment, else the module it runs.
    found = shutil.which("ainb", path=str(Path(sys.executable).parent)) or shutil.which("ainb")
    return [found] if found else [sys.executable, "-m", "cli.main"]


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory) -> dict[str, str]:
    """No AINB_* from the caller (AINB_CONFIG is the server's), no user config file."""
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AINB_")}
    return {**env, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}


def ainb(*args: str, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """The `ainb` CLI, run as a user would."""
    return subprocess.run(
        [*_command(), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture()
def cli(stack: Stack, project: str, cli_env):
    """`ainb --url … --project …` with the stack's administrator token (in AINB_TOKEN, as
    a user's shell would have it, so that a test's --token still wins)."""
    env = {**cli_env, "AINB_TOKEN": stack.admin_token}

    def call(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return ainb("--url", stack.api_url, "--project", project, *args, env=env,
                    timeout=timeout)  # fmt: skip

    return call
