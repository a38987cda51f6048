"""A fleet on one machine: the real Docker host plus simulated GPU hosts (runtime "sim",
whose containers are records on disk). Placement by capacity, the queue, a storm of
concurrent starts with a crash in the middle, agent restarts and a host lost for good."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from domain.config import JUPYTERLAB_IMAGE
from tests.integration.conftest import Notebooks
from tests.support import eventually
from worker.stack import Ports, Stack

pytestmark = pytest.mark.docker

GPU_HOSTS = {"gpu-a": ["0", "1", "2", "3"], "gpu-b": ["0", "1", "2", "3"]}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, docker_client) -> Iterator[Stack]:
    s = Stack(
        tmp_path_factory.mktemp("fleet"),
        Ports.random(),
        runtime="docker",
        extra_env={
            "AINB_HEARTBEAT_TIMEOUT_S": "5",
            "AINB_HOST_PICKUP_TIMEOUT_S": "10",
            "AINB_HOST_HEARTBEAT_S": "1",
            "AINB_HOST_DOWN_AFTER_S": "6",
            "AINB_RECONCILE_INTERVAL_S": "5",
            "AINB_PROJECT_MAX_GPUS": "100",
            "AINB_WORKSPACE_CHECKPOINT_S": "0",
        },
        config_overrides={
            "frameworks": {
                "python": {
                    "default_version": "3.11",
                    "versions": {"3.11": {"images": {"jupyterlab": JUPYTERLAB_IMAGE}}},
                }
            },
        },
        sim_hosts={
            name: {
                "AINB_HOST_GPU_IDS": json.dumps(ids),
                "AINB_HOST_GPU_MODEL": "sim-gpu",
                "AINB_HOST_CPUS": "64",
                "AINB_HOST_MEMORY_GIB": "512",
                "AINB_HOST_FLAVORS": '["ai1-1-gpu"]',
            }
            for name, ids in GPU_HOSTS.items()
        },
    )
    try:
        s.start()
        yield s
    finally:
        s.stop()
        for c in docker_client.containers.list(all=True, filters={"label": "ai.ainb.managed"}):
            if c.labels.get("ai.ainb.project", "").startswith("fl-"):
                c.remove(force=True)


@pytest.fixture()
def fleet_api(fleet: Stack) -> Iterator[httpx.Client]:
    with fleet.api_client(timeout=60) as client:
        yield client


@pytest.fixture()
def nbs(fleet_api, docker_client) -> Notebooks:
    return Notebooks(fleet_api, f"fl-{uuid.uuid4().hex[:8]}", docker_client)


def _gpu(nbs: Notebooks, name: str, gpus: int) -> str:
    return nbs.create(name=name, resources={"flavor": "ai1-1-gpu", "gpu": gpus})["id"]


def _queued_info(nbs: Notebooks, nid: str, timeout: float = 30) -> dict:
    def queued() -> dict:
        info = nbs.get(nid).json()["status"]["info"]
        assert info["code"] == "QUEUED", info
        return info

    return eventually(queued, timeout=timeout, what=f"{nid} to be QUEUED")


def _hosts(api: httpx.Client) -> dict[str, dict]:
    r = api.get("/v1/hosts")
    assert r.status_code == 200, r.text
    return {h["name"]: h for h in r.json()["hosts"]}


def _sim_records(fleet: Stack, host: str) -> list[dict]:
    d = fleet.data_dir / "hosts" / host / "sim-runtime"
    return [json.loads(p.read_text()) for p in d.glob("*.json")] if d.is_dir() else []


def _sim_starts(fleet: Stack, host: str, notebook_id: str) -> int:
    log = fleet.data_dir / "hosts" / host / "sim-runtime" / "starts.jsonl"
    if not log.exists():
        return 0
    return sum(json.loads(line)["notebook"] == notebook_id for line in log.read_text().splitlines())


def _assert_books_consistent(fleet: Stack, api: httpx.Client) -> None:
    """No GPU held twice, by the fleet's books or by the containers on the hosts."""
    hosts = _hosts(api)
    for name in GPU_HOSTS:
        held = [g for a in hosts[name]["allocations"] for g in a["gpu_ids"]]
        assert len(held) == len(set(held)), (name, held)
        in_use = [g for r in _sim_records(fleet, name) for g in r["gpu_ids"]]
        assert len(in_use) == len(set(in_use)), (name, in_use)


def _delete_all(nbs: Notebooks, ids: list[str]) -> None:
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: nbs.delete(i), ids))
    for nid in ids:
        nbs.wait(nid, "DELETED", timeout=180)


def test_hosts_and_flavors_are_listed(fleet_api: httpx.Client) -> None:
    hosts = _hosts(fleet_api)
    assert {"local", *GPU_HOSTS} <= set(hosts)
    assert hosts["gpu-a"]["inventory"]["gpu_ids"] == GPU_HOSTS["gpu-a"]
    assert hosts["local"]["inventory"]["gpu_ids"] == []  # no GPU: never offered one
    assert "ai1-1-gpu" not in hosts["local"]["inventory"]["flavors"]
    flavors = {f["name"]: f for f in fleet_api.get("/v1/capabilities/flavors").json()}
    assert flavors["ai1-1-gpu"]["free_units"] == 4 and flavors["ai1-1-cpu"]["free_units"] >= 1


def test_queue_moves_in_order_and_a_queued_delete_is_free(
    fleet: Stack, fleet_api: httpx.Client, nbs: Notebooks
) -> None:
    running = [_gpu(nbs, f"r{i}", 2) for i in range(4)]  # all 8 GPUs
    for nid in running:
        nb = nbs.wait(nid, "RUNNING")
        assert nb["status"]["host"] in GPU_HOSTS
    q1, q2, q3 = _gpu(nbs, "q1", 2), _gpu(nbs, "q2", 1), _gpu(nbs, "q3", 2)
    for place, nid in enumerate((q1, q2, q3), start=1):
        info = _queued_info(nbs, nid)
        assert info["code"] == "QUEUED" and f"number {place} in line" in info["message"], info
    _assert_books_consistent(fleet, fleet_api)

    # a stop frees 2 GPUs: the head (2 GPUs) starts; q2 is now first in line
    assert nbs.command(running[0], "stop").status_code == 202
    nbs.wait(q1, "RUNNING")
    assert nbs.get(q3).json()["status"]["state"] == "STARTING"
    assert "number 1 in line" in nbs.get(q2).json()["status"]["info"]["message"]
    # deleting a queued notebook is immediate, and nothing was billed
    assert nbs.delete(q3).status_code == 202
    nbs.wait(q3, "DELETED", timeout=30)
    assert nbs.api.get(f"{nbs.base}/{q3}/usage").status_code in (200, 404)
    assert nbs.command(running[1], "stop").status_code == 202
    nbs.wait(q2, "RUNNING")
    assert all(r["notebook"] != q3 for h in GPU_HOSTS for r in _sim_records(fleet, h))
    _assert_books_consistent(fleet, fleet_api)
    _delete_all(nbs, [*running, q1, q2])
    assert (
        _hosts(fleet_api)["gpu-a"]["allocations"] == []
        and _hosts(fleet_api)["gpu-b"]["allocations"] == []
    )


def test_a_storm_of_starts_with_a_crash_never_over_allocates(
    fleet: Stack, fleet_api: httpx.Client, nbs: Notebooks
) -> None:
    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(_gpu, nbs, f"s{i}", 1) for i in range(50)]
        # the control plane dies in the middle of the allocations, then comes back
        time.sleep(1.0)
        fleet.kill("control-worker")
        ids = [f.result() for f in futures]
    fleet.start_control_worker()

    def eight_running() -> list[str]:
        states = [nbs.get(i).json()["status"]["state"] for i in ids]
        assert states.count("RUNNING") == 8, states
        return states

    states = eventually(eight_running, timeout=120, interval=1, what="8 notebooks RUNNING")
    assert states.count("RUNNING") == 8 and states.count("STARTING") == 42, states
    _assert_books_consistent(fleet, fleet_api)
    hosts = _hosts(fleet_api)
    assert sum(len(hosts[h]["allocations"]) for h in GPU_HOSTS) == 8
    assert len(fleet_api.get("/v1/hosts").json()["queue"]) == 42
    _delete_all(nbs, ids)
    hosts = _hosts(fleet_api)
    assert all(hosts[h]["allocations"] == [] for h in hosts)
    assert fleet_api.get("/v1/hosts").json()["queue"] == []
    assert all(_sim_records(fleet, h) == [] for h in GPU_HOSTS)


def test_agent_restart_readopts_running_notebooks(
    fleet: Stack, fleet_api: httpx.Client, nbs: Notebooks
) -> None:
    gpu_nb = _gpu(nbs, "adopt-gpu", 1)
    cpu_nb = nbs.create(name="adopt-cpu")["id"]  # only the Docker host offers cpu flavors
    host = nbs.wait(gpu_nb, "RUNNING")["status"]["host"]
    nbs.wait(cpu_nb, "RUNNING")
    [container] = nbs.containers(cpu_nb)
    fleet.kill(f"host-{host}")
    fleet.kill("host-agent")
    time.sleep(2)
    fleet.start_sim_host(host)
    fleet.start_host_agent()
    fleet.wait_for_hosts(["local", host])
    time.sleep(8)  # a reconcile pass and a few watches
    for nid in (gpu_nb, cpu_nb):
        assert nbs.get(nid).json()["status"]["state"] == "RUNNING"
    assert _sim_starts(fleet, host, gpu_nb) == 1  # not started again
    [again] = nbs.containers(cpu_nb)
    assert again.id == container.id and again.status == "running"
    assert again.attrs["State"]["StartedAt"] == container.attrs["State"]["StartedAt"]
    # the real container runs hardened
    host_config = again.attrs["HostConfig"]
    assert host_config["Privileged"] is False and host_config["CapDrop"] == ["ALL"]
    assert "no-new-privileges" in host_config["SecurityOpt"]
    assert host_config["PidsLimit"] and host_config["Memory"] > 0
    mounts = {m["Destination"] for m in again.attrs["Mounts"]}
    assert "/var/run/docker.sock" not in mounts
    _delete_all(nbs, [gpu_nb, cpu_nb])


def test_a_host_lost_for_good(fleet: Stack, fleet_api: httpx.Client, nbs: Notebooks) -> None:
    ids = [_gpu(nbs, f"lost{i}", 2) for i in range(4)]
    hosts = {nid: nbs.wait(nid, "RUNNING")["status"]["host"] for nid in ids}
    on_b = [nid for nid, h in hosts.items() if h == "gpu-b"]
    assert on_b
    fleet.kill("host-gpu-b")
    for nid in on_b:
        nb = nbs.wait(nid, "ERROR", timeout=90)
        assert nb["status"]["info"]["code"] == "HOST_LOST"
    eventually(
        lambda: _hosts(fleet_api)["gpu-b"]["state"] == "down",
        timeout=30,
        interval=0.5,
        retry_on=(),
        what="gpu-b to be down",
        detail=lambda: _hosts(fleet_api)["gpu-b"],
    )
    # its capacity is not offered again: new GPU notebooks only ever go to gpu-a
    newcomer = _gpu(nbs, "after-loss", 2)
    state = nbs.wait(newcomer, "RUNNING", "STARTING")["status"]
    if state["state"] == "RUNNING":
        assert state["host"] == "gpu-a"
    assert all(
        a["notebook"].endswith(newcomer) is False for a in _hosts(fleet_api)["gpu-b"]["allocations"]
    )
    # the host comes back: containers of notebooks that no longer run there are removed
    assert any(r["notebook"] in on_b for r in _sim_records(fleet, "gpu-b"))
    fleet.start_sim_host("gpu-b")
    fleet.wait_for_hosts(["gpu-b"])
    assert not any(r["notebook"] in on_b for r in _sim_records(fleet, "gpu-b"))
    _delete_all(nbs, [*ids, newcomer])


def test_quotas_are_named(nbs: Notebooks) -> None:
    r = nbs.post(name="big", resources={"flavor": "ai1-1-gpu", "gpu": 5})
    assert r.status_code == 422 and r.json()["field"] == "resources.gpu", r.text
    assert "notebook_max_gpus" in r.json()["error"]
    r = nbs.post(name="many", resources={"flavor": "ai1-1-cpu", "cpu": 13})
    assert r.status_code == 422 and "12" in r.json()["error"], r.text


def test_project_gpu_quota_is_a_409_and_queued_notebooks_count(notebooks: Notebooks) -> None:
    # The session stack has no GPU host: GPU notebooks wait in the queue, and count.
    first = notebooks.create(name="g1", resources={"flavor": "ai1-1-gpu", "gpu": 2})["id"]
    second = notebooks.create(name="g2", resources={"flavor": "ai1-1-gpu", "gpu": 2})["id"]
    info = _queued_info(notebooks, second)
    assert info["code"] == "QUEUED" and "no host offering ai1-1-gpu is up" in info["message"]
    r = notebooks.post(name="g3", resources={"flavor": "ai1-1-gpu", "gpu": 1})
    assert r.status_code == 409, r.text
    assert "at most 4 GPUs at once per project" in r.json()["error"]
    for nid in (first, second):
        assert notebooks.delete(nid).status_code == 202
        notebooks.wait(nid, "DELETED", timeout=30)
