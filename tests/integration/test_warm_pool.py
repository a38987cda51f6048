"""A host's warm pool: JupyterLab editors started ahead, claimed at launch. A claimed
editor must be the notebook's own in every way its user can tell (tokens, environment,
mounts, limits, isolation), its workspace is saved and restored as a cold one's, the pool
refills to its size and never beyond, and the agent removes its unclaimed slots when it
stops."""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import pytest
from jupyter_kernel_client import JupyterKernelClient

from activities.paths import NotebookPaths, host_dir, notebooks_dir
from activities.runtime.docker_runtime import POOL_LABEL
from activities.runtime.warm_pool import SLOT_PREFIX
from domain.config import JUPYTERLAB_IMAGE
from domain.ids import container_name
from domain.tokens import editor_token
from tests.integration.conftest import FAST_TIMINGS, PROJECT_API_TOKEN, Notebooks
from tests.integration.test_isolation import PROBE, _exec, _host_addresses, _platform_ports
from tests.support import eventually
from worker.stack import Ports, Stack

pytestmark = pytest.mark.docker

POOL_SIZE = 2
ENV = {"MY_SETTING": "warm"}
# What decides how a container is confined, cold or claimed alike.
CONFINEMENT = (
    "NanoCpus",
    "Memory",
    "MemorySwap",
    "PidsLimit",
    "CapDrop",
    "CapAdd",
    "SecurityOpt",
    "NetworkMode",
    "Privileged",
    "Init",
    "ReadonlyRootfs",
    "DeviceRequests",
)


@pytest.fixture(scope="module")
def pool_stack(tmp_path_factory, docker_client) -> Iterator[tuple[Stack, str]]:
    project = f"it-{uuid.uuid4().hex[:8]}"
    s = Stack(
        tmp_path_factory.mktemp("pool"),
        Ports.random(),
        runtime="docker",
        extra_env=dict(FAST_TIMINGS),
        config_overrides={
            "api_tokens": {project: [PROJECT_API_TOKEN]},
            "warm_pool": {JUPYTERLAB_IMAGE: POOL_SIZE},
        },
    )
    try:
        s.start()
        yield s, project
    finally:
        s.stop()
        for c in _ours(docker_client, s):
            c.remove(force=True)


@pytest.fixture(scope="module")
def pool_notebooks(pool_stack, docker_client) -> Iterator[Notebooks]:
    stack, project = pool_stack
    with stack.api_client(timeout=60) as api:
        yield Notebooks(api, project, docker_client)


def _ours(client: docker.DockerClient, stack: Stack) -> list:
    """The pool's containers of this stack, claimed or not (their mounts say whose)."""
    return [
        c
        for c in client.containers.list(all=True, filters={"label": POOL_LABEL})
        if any(str(m.get("Source", "")).startswith(str(stack.data_dir)) for m in c.attrs["Mounts"])
    ]


def _unclaimed(client: docker.DockerClient, stack: Stack) -> list:
    return [c for c in _ours(client, stack) if c.name.startswith(SLOT_PREFIX)]


def _pool_root(stack: Stack) -> Path:
    return host_dir(stack.data_dir, stack.host_name) / "pool"


def _full(client: docker.DockerClient, stack: Stack) -> None:
    def ready() -> bool:
        slots = _unclaimed(client, stack)
        return len(slots) == POOL_SIZE and all(
            (_pool_root(stack) / c.name.removeprefix(SLOT_PREFIX) / "run" / "editor.sock").exists()
            for c in slots
        )

    eventually(ready, timeout=120, interval=0.5, what="the warm pool to be full")


def _origin(nb: dict) -> tuple[str, str]:
    base, _, query = nb["status"]["url"].partition("?token=")
    return base.removesuffix("/lab"), query


def _editor(stack: Stack, nid: str, token: str | None) -> int:
    """What the editor itself answers on its socket (beneath the gateway)."""
    sock = NotebookPaths(notebooks_dir(stack.data_dir, stack.host_name), nid).editor_socket
    headers = {"Authorization": f"token {token}"} if token else {}
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=10) as c:
        return c.get("http://editor/api/status", headers=headers).status_code


def test_the_pool_fills_to_its_size_and_never_beyond(pool_stack, docker_client) -> None:
    stack, _ = pool_stack
    _full(docker_client, stack)
    for _ in range(10):
        assert len(_unclaimed(docker_client, stack)) <= POOL_SIZE
    # Until claimed, a slot's editor lets nobody in.
    slot = _unclaimed(docker_client, stack)[0].name.removeprefix(SLOT_PREFIX)
    sock = _pool_root(stack) / slot / "run" / "editor.sock"
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=10) as c:
        assert c.get("http://editor/api/status").status_code == 403
        assert c.get("http://editor/api/contents").status_code == 403


def test_a_claimed_editor_is_the_notebooks_own(
    pool_stack, pool_notebooks: Notebooks, docker_client
) -> None:
    stack, project = pool_stack
    notebooks = pool_notebooks
    _full(docker_client, stack)
    warm = [notebooks.create(name=f"warm-{i}", env_vars=ENV)["id"] for i in range(2)]
    # The same image and flavor, but without a token: no slot can serve it.
    cold = notebooks.create(name="cold", env_vars=ENV, unsecure_http=True)["id"]
    running = {nid: notebooks.wait(nid, "RUNNING", timeout=240) for nid in [*warm, cold]}

    [cold_c] = notebooks.containers(cold)
    assert POOL_LABEL not in cold_c.labels
    secret = stack.secrets["token_secret"]
    for nid in warm:
        [c] = notebooks.containers(nid)
        assert POOL_LABEL in c.labels and c.name == container_name(nid), c.labels
        # Confined exactly as the cold one, limits included.
        for key in CONFINEMENT:
            assert c.attrs["HostConfig"][key] == cold_c.attrs["HostConfig"][key], key
        assert c.attrs["Config"]["User"] == cold_c.attrs["Config"]["User"]
        # The editor takes the notebook's own token, and nothing else.
        assert _editor(stack, nid, editor_token(secret, nid)) == 200
        assert _editor(stack, nid, None) == 403
        assert (
            _editor(stack, nid, editor_token(secret, warm[0] if nid != warm[0] else warm[1])) == 403
        )

        # Through the gateway, as the user: a kernel has the notebook's environment and
        # writes into the notebook's workspace on the host.
        origin, link = _origin(running[nid])
        assert httpx.get(origin + "/api/status", params={"token": link}).status_code == 200
        with JupyterKernelClient(server_url=origin, token=link) as kernel:
            code = (
                "import os, json; open('/workspace/warm.txt', 'w').write('kept');"
                "print(json.dumps({k: v for k, v in os.environ.items()}))"
            )
            reply = kernel.execute(code)
            assert reply["status"] == "ok", reply
            env = json.loads(reply["outputs"][0]["text"])
        assert env["MY_SETTING"] == "warm"
        assert env["AINB_NOTEBOOK_ID"] == nid and env["AINB_PROJECT"] == project
        assert "AINB_EDITOR_CLAIM_FILE" not in env
        assert not any(editor_token(secret, nid) in v for v in env.values())
        paths = NotebookPaths(notebooks_dir(stack.data_dir, stack.host_name), nid)
        written = paths.workspace / "warm.txt"
        assert written.read_text() == "kept" and written.stat().st_uid == 1000
        assert not (paths.run / "claim.json").exists()  # read once, then gone

        # From a shell inside, as an attacker: no platform port, no other notebook, no
        # slot, no privilege.
        ports = _platform_ports(stack)
        targets = [[h, p] for h in sorted(_host_addresses()) for p in sorted(ports)]
        code_, out = _exec(c, "python3", "-c", PROBE, json.dumps(targets))
        assert code_ == 0, out
        assert {t: r for t, r in json.loads(out).items() if r == "connected"} == {}
        other = next(o for o in warm if o != nid)
        theirs = NotebookPaths(notebooks_dir(stack.data_dir, stack.host_name), other)
        for path in (theirs.workspace, theirs.editor_socket, _pool_root(stack), stack.data_dir):
            assert _exec(c, "test", "-e", str(path))[0] != 0, path
        status = _exec(c, "cat", "/proc/1/status")[1]
        assert "CapEff:\t0000000000000000" in status and "NoNewPrivs:\t1" in status

    # Both slots were taken: the pool is back to its size.
    _full(docker_client, stack)

    # Stopped and started again (on a new slot), the workspace is the one it left.
    nid = warm[0]
    assert notebooks.command(nid, "stop").status_code == 202
    notebooks.wait(nid, "STOPPED")
    assert notebooks.containers(nid) == []
    assert notebooks.command(nid, "start").status_code == 202
    notebooks.wait(nid, "RUNNING", timeout=240)
    [c] = notebooks.containers(nid)
    assert POOL_LABEL in c.labels
    assert _exec(c, "cat", "/workspace/warm.txt")[1] == "kept"

    for nid in [*warm, cold]:
        notebooks.delete(nid)
    for nid in [*warm, cold]:
        notebooks.wait(nid, "DELETED")
        assert notebooks.containers(nid) == []


def test_the_agent_removes_its_unclaimed_slots_when_it_stops(pool_stack, docker_client) -> None:
    stack, _ = pool_stack
    _full(docker_client, stack)
    stack.kill("host-agent", signal.SIGTERM)
    assert _unclaimed(docker_client, stack) == []
    assert not _pool_root(stack).exists()
    # Started again, it fills the pool anew.
    stack.start_part("host-agent")
    _full(docker_client, stack)
