"""Syncs while RUNNING on the real stack: datasync push and pull, periodic workspace
checkpoints, and the host's volume cache."""

from __future__ import annotations

import pytest

from domain.ids import workspace_prefix
from tests.integration.conftest import Notebooks
from tests.integration.s3data import bucket_keys, make_bucket
from tests.support import eventually

pytestmark = pytest.mark.docker


def _exec(container, script: str) -> str:
    code, output = container.exec_run(["sh", "-c", script])
    assert code == 0, output.decode()
    return output.decode()


def test_datasync_push_and_pull_while_running(notebooks: Notebooks, s3) -> None:
    data_in = make_bucket(s3, "ds", {"a.txt": b"first\n"})
    data_out = make_bucket(s3, "ds", {"keep.txt": b"remote\n"})
    nb = notebooks.create(
        name="datasync",
        volumes=[f"{data_in}@local:/workspace/in:ro", f"{data_out}@local:/workspace/out:rw"],
    )
    nid = nb["id"]
    try:
        notebooks.wait(nid, "RUNNING")
        [container] = notebooks.containers(nid)
        _exec(container, "echo made-inside > /workspace/out/new.txt && rm /workspace/out/keep.txt")

        job = notebooks.datasync(nid, direction="push", volume="/workspace/out")
        assert job["state"] == "done", job
        assert job["targets"] == ["/workspace/out"] and job["files_done"] == 1
        out = bucket_keys(s3, data_out)
        assert out["new.txt"] == b"made-inside\n" and out["keep.txt"] == b"remote\n"  # rw
        nb = notebooks.get(nid).json()
        assert nb["status"]["state"] == "RUNNING"
        assert nb["status"]["volumes"][1]["last_sync"]["direction"] == "push"

        s3.put_object(Bucket=data_in, Key="b.txt", Body=b"arrived later\n")
        job = notebooks.datasync(nid, direction="pull")
        assert job["state"] == "done" and job["targets"] == ["/workspace/in", "/workspace/out"]
        assert _exec(container, "cat /workspace/in/b.txt") == "arrived later\n"
        # the file the notebook wrote and pushed is still there after the pull
        assert _exec(container, "cat /workspace/out/new.txt") == "made-inside\n"

        # changed on both sides: the pull brings the stored version and keeps the local one
        # where the user sees it, inside the workspace (saved with it at stop)
        _exec(container, "echo local-edit > /workspace/out/new.txt")
        s3.put_object(Bucket=data_out, Key="new.txt", Body=b"remote-edit\n")
        job = notebooks.datasync(nid, direction="pull", volume="/workspace/out")
        assert job["state"] == "done", job
        assert _exec(container, "cat /workspace/out/new.txt") == "remote-edit\n"
        assert _exec(container, "cat /workspace/.ainb-preserved/out/*/new.txt") == "local-edit\n"
        nb = notebooks.get(nid).json()
        assert ".ainb-preserved/out" in nb["status"]["volumes"][1]["last_sync"]["message"]

        # bad requests name the field; a ro volume is never pushed
        base = f"{notebooks.base}/{nid}/datasync"
        r = notebooks.api.post(base, json={"direction": "push", "volume": "/workspace/in"})
        assert r.status_code == 422 and r.json()["field"] == "volume", r.text
        r = notebooks.api.post(base, json={"direction": "sideways"})
        assert r.status_code == 422 and r.json()["field"] == "direction", r.text
        r = notebooks.api.post(base, json={"direction": "pull", "volume": "/workspace/nope"})
        assert r.status_code == 422 and "/workspace/nope" in r.json()["error"], r.text
        assert set(bucket_keys(s3, data_in)) == {"a.txt", "b.txt"}

        assert notebooks.command(nid, "stop").status_code == 202
        notebooks.wait(nid, "STOPPED")
        r = notebooks.api.post(base, json={"direction": "push"})
        assert r.status_code == 409 and "RUNNING" in r.json()["error"], r.text
    finally:
        notebooks.delete(nid)
        notebooks.wait(nid, "DELETED")


def test_checkpoint_saves_the_workspace_while_running(notebooks: Notebooks, s3) -> None:
    # The stack checkpoints workspaces every 12 s (AINB_WORKSPACE_CHECKPOINT_S).
    nb = notebooks.create(name="checkpoint")
    nid = nb["id"]
    try:
        nb = notebooks.wait(nid, "RUNNING")
        assert nb["status"]["workspace"]["next_checkpoint_at"]
        [container] = notebooks.containers(nid)
        _exec(container, "mkdir -p /workspace/work && echo epoch-3 > /workspace/work/ckpt.txt")
        prefix = workspace_prefix(notebooks.project, nid)
        found = eventually(
            lambda: {
                k: v for k, v in bucket_keys(s3, "ainb-workspaces", prefix).items() if "ckpt" in k
            },
            timeout=60,
            interval=1,
            what="a checkpoint holding work/ckpt.txt",
        )
        assert list(found.values()) == [b"epoch-3\n"], found
        nb = notebooks.get(nid).json()
        assert nb["status"]["state"] == "RUNNING"  # a checkpoint does not stop anything
        assert nb["status"]["workspace"]["saved"] and nb["status"]["workspace"]["last_saved_at"]
    finally:
        notebooks.delete(nid)
        notebooks.wait(nid, "DELETED")


def test_cache_volume_is_reused_by_the_next_notebook(notebooks: Notebooks, s3, stack) -> None:
    files = {f"shard-{i:02}.bin": bytes([i]) * 50_000 for i in range(20)}
    data = make_bucket(s3, "ds", files)
    volume = f"{data}@local:/workspace/data:ro:cache"

    def run_one(name: str) -> dict:
        nb = notebooks.create(name=name, volumes=[volume])
        nid = nb["id"]
        try:
            nb = notebooks.wait(nid, "RUNNING")
            [container] = notebooks.containers(nid)
            assert _exec(container, "ls /workspace/data | wc -l").strip() == str(len(files))
            return nb["status"]["volumes"][0]["last_sync"]
        finally:
            notebooks.delete(nid)
            notebooks.wait(nid, "DELETED")

    first = run_one("cache-1")
    assert "downloaded 20 file(s)" in first["message"], first
    second = run_one("cache-2")
    assert "downloaded 0 file(s)" in second["message"], second
    assert second["files_seeded"] == 20
    s3.put_object(Bucket=data, Key="shard-03.bin", Body=b"changed")
    third = run_one("cache-3")
    assert "downloaded 1 file(s)" in third["message"], third
    cache = stack.data_dir / "hosts" / "local" / "cache" / notebooks.project
    assert len(list(cache.iterdir())) == 1  # one copy per project and bucket/prefix
