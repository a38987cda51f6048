"""Two real hosts on one machine: the stack's host agent on the main Docker engine and a
second agent on an engine of its own (tests/integration/second_engine.py), each host
with room for one notebook. A notebook stopped on one host starts on the other with its
workspace; a host whose agent is killed loses its notebooks (ERROR HOST_LOST) while the
other host's run on, and its containers are gone once it is back (docs/lifecycle.md)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import docker
import pytest

from domain.config import JUPYTERLAB_IMAGE
from tests.integration.chaos_support import (
    Api,
    Editor,
    Gone,
    managed_containers,
    own_stack,
    running,
)
from tests.integration.second_engine import Engine, describe, second_engine
from tests.support import eventually
from worker.stack import Stack

pytestmark = pytest.mark.docker

FIRST = "local"  # the stack's own host agent, on the main engine
SECOND = "second"


@pytest.fixture(scope="module")
def engine(docker_client: docker.DockerClient) -> Iterator[Engine]:
    with second_engine() as e:
        e.ensure_images(docker_client, JUPYTERLAB_IMAGE)
        yield e


@pytest.fixture(scope="module")
def two_project() -> str:
    return f"two-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def two_hosts(
    tmp_path_factory, docker_client: docker.DockerClient, engine: Engine, two_project: str
) -> Iterator[Stack]:
    env = {
        # The fleet sees a silent host down within seconds, so nothing is placed there.
        "AINB_HOST_HEARTBEAT_S": "1",
        "AINB_HOST_DOWN_AFTER_S": "6",
        "AINB_RECONCILE_INTERVAL_S": "5",
    }
    # The second engine's containers go with it (its fixture); own_stack removes the rest.
    with own_stack(
        tmp_path_factory.mktemp("two-hosts"),
        docker_client,
        two_project,
        env,
        # One ai1-1-cpu notebook fills a host: where the next one goes is the fleet's
        # only choice, and a full host is how a test keeps a notebook off it.
        config={"host_cpus": 1, "host_memory_gib": 8},
        extra_hosts={SECOND: {"DOCKER_HOST": engine.url}},
    ) as stack:
        yield stack


@pytest.fixture()
def engines(docker_client: docker.DockerClient, engine: Engine) -> dict[str, docker.DockerClient]:
    return {FIRST: docker_client, SECOND: engine.client}


@pytest.fixture()
def api(two_hosts: Stack, two_project: str) -> Iterator[Api]:
    client = Api(two_hosts, two_project)
    yield client
    # A failed test may have left its second agent down and notebooks holding both hosts:
    # the next test needs both hosts empty.
    if not running(two_hosts, f"host-{SECOND}"):
        two_hosts.start_extra_host(SECOND)
        two_hosts.wait_for_hosts([SECOND])
    listed, _ = client.request("GET", client.base)
    for nb in listed.json() if listed.status_code == 200 else []:
        _delete(client, nb["id"])
    client.close()


def _delete(api: Api, nid: str) -> None:
    try:
        api.command(nid, "delete", {"DELETING", "DELETED"})
    except Gone:
        return
    api.wait(nid, "DELETED", fail_on=())


def _allocations(api: Api, host: str) -> list[dict]:
    r, _ = api.request("GET", "/v1/hosts")
    assert r.status_code == 200, r.text
    [found] = [h for h in r.json()["hosts"] if h["name"] == host]
    return found["allocations"]


def _holds(api: Api, host: str, nid: str) -> bool:
    return any(a["notebook"].endswith(nid) for a in _allocations(api, host))


def _containers(engines: dict[str, docker.DockerClient], project: str, nid: str) -> dict:
    """Names of the notebook's containers, per host."""
    return {h: [c.name for c in managed_containers(e, project, nid)] for h, e in engines.items()}


def test_a_stopped_notebook_starts_on_the_other_host_with_its_workspace(
    api: Api, engines: dict[str, docker.DockerClient], engine: Engine, two_project: str
) -> None:
    nid = api.create("mover")["id"]
    nb = api.wait(nid, "RUNNING")
    first = nb["status"]["host"]
    other = SECOND if first == FIRST else FIRST
    assert len(_containers(engines, two_project, nid)[first]) == 1, describe(engine)
    content = f"written on {first} {uuid.uuid4()}\n" * 50
    Editor(nb).write("moved/notes.txt", content)
    api.command(nid, "stop", {"STOPPING", "STOPPED"})
    api.wait(nid, "STOPPED")
    assert _containers(engines, two_project, nid) == {FIRST: [], SECOND: []}
    eventually(
        lambda: not _holds(api, first, nid),
        timeout=30,
        interval=0.5,
        what=f"{first} to release the stopped notebook's capacity",
    )

    # Another notebook takes the first host's only room (the fleet's tie goes to the same
    # host it chose before): the stopped one has nowhere else to go but the other host.
    filler = api.create("filler")["id"]
    placed = eventually(
        lambda: next((h for h in (FIRST, SECOND) if _holds(api, h, filler)), None),
        timeout=60,
        interval=0.3,
        what="the filler to be placed",
    )
    assert placed == first, f"expected the filler on {first}, the fleet placed it on {placed}"
    api.command(nid, "start", {"STARTING", "RUNNING"})
    moved = api.wait(nid, "RUNNING")
    assert moved["status"]["host"] == other, moved["status"]
    # The same link opens it wherever it runs now.
    assert moved["status"]["url"] == nb["status"]["url"]
    assert _containers(engines, two_project, nid)[first] == []
    [container] = managed_containers(engines[other], two_project, nid)
    assert container.status == "running" and container.labels["ai.ainb.host"] == other
    assert Editor(moved).read("moved/notes.txt") == content, (
        f"expected the workspace written on {first} restored on {other}"
    )
    assert api.wait(filler, "RUNNING")["status"]["host"] == first
    for n in (nid, filler):
        _delete(api, n)
    assert _containers(engines, two_project, nid) == {FIRST: [], SECOND: []}


def test_a_killed_agent_loses_its_notebooks_and_the_other_host_runs_on(
    api: Api,
    two_hosts: Stack,
    engines: dict[str, docker.DockerClient],
    engine: Engine,
    two_project: str,
) -> None:
    # Placed one after the other, so that the second finds the first host full.
    survivor = api.create("survivor")["id"]
    eventually(
        lambda: _holds(api, FIRST, survivor) or _holds(api, SECOND, survivor),
        timeout=60,
        interval=0.3,
        what="the first notebook to be placed",
    )
    victim = api.create("victim")["id"]
    placed = {nid: api.wait(nid, "RUNNING")["status"]["host"] for nid in (survivor, victim)}
    assert set(placed.values()) == {FIRST, SECOND}, placed
    if placed[victim] != SECOND:
        survivor, victim = victim, survivor
    kept = managed_containers(engines[FIRST], two_project, survivor)
    assert len(kept) == 1 and kept[0].status == "running"
    editor = Editor(api.get(survivor))
    editor.write("alive.txt", "before\n")

    two_hosts.kill(f"host-{SECOND}")  # SIGKILL: no goodbye to the fleet or the workflows
    lost = api.wait(victim, "ERROR", timeout=150, fail_on=("FAILED",))
    assert lost["status"]["info"]["code"] == "HOST_LOST", lost["status"]
    # Its container outlives the agent until the host is back: the engine still runs.
    assert len(managed_containers(engines[SECOND], two_project, victim)) == 1

    assert api.get(survivor)["status"]["state"] == "RUNNING"
    editor.write("alive.txt", "after\n")
    assert editor.read("alive.txt") == "after\n"
    [still] = managed_containers(engines[FIRST], two_project, survivor)
    assert still.id == kept[0].id and still.status == "running"

    # The agent comes back: it removes what no longer runs there before it takes work.
    two_hosts.start_extra_host(SECOND)
    two_hosts.wait_for_hosts([SECOND])
    eventually(
        lambda: managed_containers(engines[SECOND], two_project, victim) == [],
        timeout=60,
        interval=0.5,
        what="the lost notebook's container to be removed",
        detail=lambda: describe(engine),
    )
    eventually(
        lambda: not _holds(api, SECOND, victim),
        timeout=60,
        interval=0.5,
        what=f"{SECOND} to hold nothing for the lost notebook (I5)",
        detail=lambda: _allocations(api, SECOND),
    )
    assert api.get(victim)["status"]["state"] == "ERROR"
    assert api.get(survivor)["status"]["state"] == "RUNNING"
    assert managed_containers(engines[FIRST], two_project, survivor)[0].id == kept[0].id
    for nid in (survivor, victim):
        _delete(api, nid)
    left = {h: [c.name for c in managed_containers(e, two_project)] for h, e in engines.items()}
    assert left == {FIRST: [], SECOND: []}, left
