"""Nothing stuck, nothing orphaned, nothing lost, on the real stack: a workflow closed from
outside (the Web UI's Terminate), a push that fails for good (SYNC_FAILED, forced
delete), the data a lost host still holds, and the preserved files of a delete."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid

import pytest
from temporalio.client import Client

from activities.paths import notebooks_dir
from domain.ids import workflow_id, workspace_prefix
from tests.integration.conftest import Notebooks
from tests.integration.s3data import bucket_keys, make_bucket
from tests.support import eventually
from worker.stack import Stack

pytestmark = pytest.mark.docker

WORKSPACES = "ainb-workspaces"
# The stack's reconcile interval (conftest) plus a stop and a push.
TAKE_OVER_BOUND_S = 10 + 40


def _exec(container, script: str) -> str:
    code, output = container.exec_run(["sh", "-c", script])
    assert code == 0, output.decode()
    return output.decode()


def _workspace(s3, project: str, nid: str) -> dict[str, bytes]:
    """The saved workspace, by path relative to it."""
    prefix = workspace_prefix(project, nid) + "/"
    return {k.removeprefix(prefix): v for k, v in bucket_keys(s3, WORKSPACES, prefix).items()}


def _terminate(stack: Stack, project: str, nid: str) -> None:
    async def go() -> None:
        client = await Client.connect(stack.temporal_address)
        await client.get_workflow_handle(workflow_id(project, nid)).terminate("test: Terminate")

    asyncio.run(go())


def _empty_and_remove(s3, bucket: str) -> None:
    for key in bucket_keys(s3, bucket):
        s3.delete_object(Bucket=bucket, Key=key)
    s3.delete_bucket(Bucket=bucket)


def test_a_terminated_running_notebook_is_saved_removed_and_shown(
    notebooks: Notebooks, stack: Stack, s3, api
) -> None:
    nb = notebooks.create(name="terminated")
    nid = nb["id"]
    nb = notebooks.wait(nid, "RUNNING")
    url = nb["status"]["url"]
    [container] = notebooks.containers(nid)
    # Written after the last checkpoint could have seen it: only the take-over saves it.
    _exec(container, "echo last-words > /workspace/after-terminate.txt")
    _terminate(stack, notebooks.project, nid)
    terminated = time.monotonic()

    # At once (as soon as the API's watch of the history hears of the close, which it does
    # not before this process's next GET can ask): not RUNNING any more, not served.
    nb = eventually(
        lambda: (nb := notebooks.get(nid).json())["status"]["state"] != "RUNNING" and nb,
        timeout=2,
        interval=0.02,
        what="the termination shown",
    )
    assert nb["status"]["state"] == "ERROR", nb["status"]
    assert nb["status"]["info"]["code"] == "WORKFLOW_CLOSED", nb["status"]
    assert "terminated" in nb["status"]["info"]["message"]
    assert nb["status"]["url"] is None

    # Within the reconcile interval and one sync: saved, removed, capacity back.
    eventually(
        lambda: not notebooks.containers(nid),
        timeout=TAKE_OVER_BOUND_S,
        interval=0.5,
        what="container removal",
    )
    nb = notebooks.wait(nid, "ERROR", timeout=30)
    took = time.monotonic() - terminated
    assert nb["status"]["info"]["code"] == "WORKFLOW_CLOSED"
    assert "saved and removed" in nb["status"]["info"]["message"], nb["status"]["info"]
    assert _workspace(s3, notebooks.project, nid).get("after-terminate.txt") == b"last-words\n"
    fleet = api.get("/v1/hosts")
    assert fleet.status_code == 200 and nid not in fleet.text, fleet.text  # nothing held
    # Billing closed: the period has ended, at the termination (not at the take-over).
    usage = api.get(f"/v1/projects/{notebooks.project}/notebooks/{nid}/usage").json()
    assert usage["periods"] and usage["periods"][-1]["ended_at"], usage
    r = notebooks.api.get(url.split("?")[0], follow_redirects=False)
    assert r.status_code != 200, r.text
    print(f"taken over and saved {took:.1f}s after termination")

    # It starts again from its saved workspace, and deletes like any other.
    assert notebooks.command(nid, "start").status_code == 202
    notebooks.wait(nid, "RUNNING")
    [container] = notebooks.containers(nid)
    assert _exec(container, "cat /workspace/after-terminate.txt") == "last-words\n"
    assert notebooks.delete(nid).status_code == 202
    notebooks.wait(nid, "DELETED")
    assert not notebooks.containers(nid)
    assert not _workspace(s3, notebooks.project, nid)


def test_delete_of_a_terminated_notebook_works_at_once(
    notebooks: Notebooks, stack: Stack, s3
) -> None:
    nb = notebooks.create(name="terminated-then-deleted")
    nid = nb["id"]
    notebooks.wait(nid, "RUNNING")
    _terminate(stack, notebooks.project, nid)
    r = notebooks.delete(nid)
    assert r.status_code == 202, r.text
    notebooks.wait(nid, "DELETED", timeout=90)
    assert not notebooks.containers(nid)


def test_a_push_that_fails_for_good_keeps_the_data_and_only_force_drops_it(
    notebooks: Notebooks, s3
) -> None:
    bucket = make_bucket(s3, "gone", {"seed.txt": b"seed\n"})
    nb = notebooks.create(name="sync-failed", volumes=[f"{bucket}@local:/workspace/out:rw"])
    nid = nb["id"]
    notebooks.wait(nid, "RUNNING")
    [container] = notebooks.containers(nid)
    _exec(container, "echo precious > /workspace/out/precious.txt && echo n > /workspace/n.txt")
    _empty_and_remove(s3, bucket)  # the bucket was deleted under the notebook

    assert notebooks.command(nid, "stop").status_code == 202
    nb = notebooks.wait(nid, "FAILED", "STOPPED", timeout=90)
    st = nb["status"]
    assert st["state"] == "FAILED" and st["info"]["code"] == "SYNC_FAILED", st
    assert "/workspace/out" in st["info"]["message"] and bucket in st["info"]["message"], st
    [item] = st["left_on_host"]["items"]
    assert item["target"] == "/workspace/out" and item["files"] >= 1 and item["bytes"] > 0
    assert item["path"], item
    # What could be saved was: the workspace.
    assert _workspace(s3, notebooks.project, nid).get("n.txt") == b"n\n"

    r = notebooks.command(nid, "stop")
    assert r.status_code == 409 and "force=true" in r.json()["error"], r.text
    # A delete without force does not drop it: the notebook stays FAILED, data listed.
    assert notebooks.delete(nid).status_code == 202
    nb = notebooks.wait(nid, "FAILED", timeout=90)
    assert nb["status"]["info"]["code"] == "SYNC_FAILED", nb["status"]
    assert "not deleted" in nb["status"]["info"]["message"]
    assert nb["status"]["left_on_host"]["items"]

    # The bucket is back: a datasync push saves what was left, and the notebook is STOPPED.
    s3.create_bucket(Bucket=bucket)
    r = notebooks.api.post(f"{notebooks.base}/{nid}/datasync", json={"direction": "push"})
    assert r.status_code == 202, r.text
    nb = notebooks.wait(nid, "STOPPED", "FAILED", timeout=90)
    assert nb["status"]["state"] == "STOPPED", nb["status"]
    assert nb["status"]["left_on_host"] is None
    assert bucket_keys(s3, bucket).get("precious.txt") == b"precious\n"

    # Once more, and this time the user gives up on it: ?force=true says what it drops.
    assert notebooks.command(nid, "start").status_code == 202
    notebooks.wait(nid, "RUNNING")
    [container] = notebooks.containers(nid)
    _exec(container, "echo doomed > /workspace/out/doomed.txt")
    _empty_and_remove(s3, bucket)
    assert notebooks.command(nid, "stop").status_code == 202
    notebooks.wait(nid, "FAILED", timeout=90)
    r = notebooks.api.delete(f"{notebooks.base}/{nid}", params={"force": "true"})
    assert r.status_code == 202, r.text
    message = r.json()["status"]["info"]["message"]
    assert "dropping" in message and "/workspace/out" in message, message
    notebooks.wait(nid, "DELETED", timeout=90)


def test_what_a_lost_host_held_is_saved_before_the_next_start_reuses_it(
    notebooks: Notebooks, stack: Stack, s3
) -> None:
    nb = notebooks.create(name="leftovers")
    nid = nb["id"]
    notebooks.wait(nid, "RUNNING")
    [container] = notebooks.containers(nid)
    _exec(container, "echo unsaved-work > /workspace/leftover.txt")
    stack.kill("host-agent")  # heartbeats stop; the container and its data stay
    try:
        nb = notebooks.wait(nid, "ERROR", timeout=120)
        assert nb["status"]["info"]["code"] == "HOST_LOST"
        assert nb["status"]["left_on_host"]["host"] == stack.host_name, nb["status"]
    finally:
        stack.start_host_agent()
    # The agent's reconciliation removes the container it is not meant to run; the data
    # directory stays.
    eventually(
        lambda: not notebooks.containers(nid),
        timeout=60,
        interval=0.5,
        what="removal of the lost container",
    )

    # A start, stopped at once while STARTING: before, the directory was removed unsaved.
    assert notebooks.command(nid, "start").status_code == 202
    assert notebooks.command(nid, "stop").status_code == 202
    nb = notebooks.wait(nid, "STOPPED", "FAILED", "ERROR", timeout=120)
    assert nb["status"]["state"] == "STOPPED", nb["status"]
    assert _workspace(s3, notebooks.project, nid).get("leftover.txt") == b"unsaved-work\n"
    assert nb["status"]["left_on_host"] is None
    notebooks.delete(nid)
    notebooks.wait(nid, "DELETED")


def test_preserved_files_survive_a_delete_without_the_workspace(notebooks: Notebooks, s3) -> None:
    bucket = make_bucket(s3, "shared", {"model.txt": b"v1\n"})
    nb = notebooks.create(name="preserved", volumes=[f"{bucket}@local:/workspace/shared:rw"])
    nid = nb["id"]
    notebooks.wait(nid, "RUNNING")
    [container] = notebooks.containers(nid)
    # Changed on both sides: the pull sets the local version aside, in the workspace.
    _exec(container, "echo mine > /workspace/shared/model.txt")
    s3.put_object(Bucket=bucket, Key="model.txt", Body=b"theirs\n")
    job = notebooks.datasync(nid, direction="pull", volume="/workspace/shared")
    assert job["state"] == "done", job
    assert _exec(container, "cat /workspace/.ainb-preserved/shared/*/model.txt") == "mine\n"

    assert notebooks.delete(nid).status_code == 202  # the workspace goes with it
    notebooks.wait(nid, "DELETED", timeout=90)
    keys = bucket_keys(s3, bucket)
    assert keys["model.txt"] == b"theirs\n"
    kept = {k: v for k, v in keys.items() if k.startswith(f".ainb-preserved/{nid}/")}
    assert list(kept.values()) == [b"mine\n"], keys


def test_a_deleted_notebooks_directory_left_on_a_host_is_removed(
    notebooks: Notebooks, stack: Stack
) -> None:
    """What a forced delete could not remove while the host was down goes once it is back;
    a directory of a notebook Temporal does not know stays (it may hold unsaved work)."""
    nb = notebooks.create(name="tidy")
    nid = nb["id"]
    notebooks.wait(nid, "RUNNING")
    assert notebooks.delete(nid).status_code == 202
    notebooks.wait(nid, "DELETED")
    root = notebooks_dir(stack.data_dir, stack.host_name)
    (root / nid / "workspace").mkdir(parents=True)
    (root / nid / "workspace" / "stale.txt").write_text("stale\n")
    unknown = uuid.uuid4().hex
    (root / unknown).mkdir()
    try:
        eventually(
            lambda: not (root / nid).exists(),
            timeout=40,
            interval=0.5,
            what="removal of the deleted one's dir",
        )
        assert (root / unknown).is_dir()
    finally:
        shutil.rmtree(root / unknown, ignore_errors=True)
