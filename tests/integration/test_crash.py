"""kill -9 of the workers mid-transition: the notebook still reaches the right state,
with no data lost and never a second container (I2, I3)."""

from __future__ import annotations

import time

import pytest

from domain.ids import workspace_prefix
from tests.integration.conftest import Notebooks
from tests.support import eventually
from worker.stack import Stack

pytestmark = pytest.mark.docker


def _kill_workers(stack: Stack) -> None:
    stack.kill("host-agent")
    stack.kill("control-worker")


def _restart_workers(stack: Stack) -> None:
    stack.start_control_worker()
    stack.start_host_agent()


def _wait_for_state_then(notebooks: Notebooks, nid: str, state: str) -> None:
    eventually(
        lambda: notebooks.get(nid).json()["status"]["state"] == state,
        timeout=60,
        interval=0.02,
        what=f"{nid} to be {state}",
    )


def test_kill_workers_while_starting_and_while_stopping(
    notebooks: Notebooks, stack: Stack, s3
) -> None:
    bucket = f"crash-{int(time.time())}"
    s3.create_bucket(Bucket=bucket)
    for i in range(200):
        s3.put_object(Bucket=bucket, Key=f"f{i}.txt", Body=f"file {i}\n".encode())
    nb = notebooks.create(name="crashy", volumes=[f"{bucket}@local:/workspace/data:rw"])
    nid = nb["id"]

    # STARTING: kill both workers, restart them; the start resumes
    _kill_workers(stack)
    time.sleep(1)
    # With no worker to answer the query, GET still tells the last known state.
    status = notebooks.get(nid).json()["status"]
    assert status["state"] == "STARTING" and status["info"]["code"] == "STATUS_STALE"
    _restart_workers(stack)
    notebooks.wait(nid, "RUNNING", timeout=180)
    assert len(notebooks.containers(nid)) == 1
    [container] = notebooks.containers(nid)
    code, _ = container.exec_run(
        ["sh", "-c", "echo survived > /workspace/data/new.txt && echo w > /workspace/w.txt"]
    )
    assert code == 0
    first_container_id = container.id

    # Kill the host agent while RUNNING: the container is not restarted
    stack.kill("host-agent")
    stack.start_host_agent()
    time.sleep(2)
    [container] = notebooks.containers(nid)
    assert container.id == first_container_id and container.status == "running"

    # STOPPING: kill both workers in the middle, restart; the stop completes with data saved
    r = notebooks.command(nid, "stop")
    assert r.status_code == 202
    _kill_workers(stack)
    assert notebooks.get(nid).json()["status"]["state"] == "STOPPING"
    _restart_workers(stack)
    nb = notebooks.wait(nid, "STOPPED", timeout=180)
    assert notebooks.containers(nid) == []
    body = s3.get_object(Bucket=bucket, Key="new.txt")["Body"].read()
    assert body == b"survived\n"
    keys = [
        o["Key"]
        for o in s3.list_objects_v2(
            Bucket="ainb-workspaces", Prefix=workspace_prefix(notebooks.project, nid)
        ).get("Contents", [])
    ]
    assert any(k.endswith("/w.txt") for k in keys)

    notebooks.delete(nid)
    notebooks.wait(nid, "DELETED")
