"""The lifecycle end to end: REST API -> Temporal workflow -> host agent -> Docker + S3,
with a real JupyterLab answering HTTP."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import time

import httpx
import pytest
from temporalio.client import Client

from domain.ids import workflow_id, workspace_prefix
from domain.tokens import editor_token
from tests.integration.conftest import Notebooks
from tests.integration.s3data import bucket_keys, make_bucket
from worker.stack import Stack

pytestmark = pytest.mark.docker


def _history_text(stack: Stack, project: str, notebook_id: str) -> str:
    async def fetch() -> str:
        client = await Client.connect(stack.temporal_address)
        history = await client.get_workflow_handle(
            workflow_id(project, notebook_id)
        ).fetch_history()
        return history.to_json()

    text = asyncio.run(fetch())
    # Payloads are base64 in the JSON form: decode them so their contents are searched too.
    decoded = []
    for blob in re.findall(r'"data":\s*"([A-Za-z0-9+/=]+)"', text):
        try:
            decoded.append(base64.b64decode(blob).decode(errors="replace"))
        except ValueError:
            pass
    return text + "\n".join(decoded)


def _exec(container, script: str) -> str:
    code, output = container.exec_run(["sh", "-c", script])
    assert code == 0, output.decode()
    return output.decode()


def test_full_lifecycle_with_volumes_and_workspace(notebooks: Notebooks, s3, stack: Stack) -> None:
    data_in = make_bucket(
        s3, "in", {"train/a.csv": b"x,y\n1,2\n", "train/sub/b.bin": os.urandom(4096)}
    )
    data_out = make_bucket(s3, "out", {"results/old.txt": b"from before"})
    nb = notebooks.create(
        name="lifecycle",
        volumes=[
            f"{data_in}@local/train:/workspace/data:ro",
            {
                "bucket": data_out,
                "alias": "local",
                "prefix": "results",
                "mount_path": "/workspace/out",
                "permission": "rw",
            },
        ],
        labels={"team": "vision"},
    )
    nid = nb["id"]
    assert nb["status"]["state"] == "STARTING"

    nb = notebooks.wait(nid, "RUNNING")
    url = nb["status"]["url"]
    assert "token=" in url
    base = url.split("/lab")[0]
    # JupyterLab answers, protected by the notebook's token
    assert httpx.get(f"{base}/api/status").status_code == 401
    assert httpx.get(url).status_code == 200
    token = url.split("token=")[1]
    assert (
        httpx.get(f"{base}/api/status", headers={"Authorization": f"token {token}"}).status_code
        == 200
    )
    # ...and neither the token nor any storage secret is in the workflow's history (I6)
    history = _history_text(stack, notebooks.project, nid)
    assert token not in history
    assert editor_token(stack.secrets["token_secret"], nid) not in history
    # Who created it is there (audit), by the token's id and name, never its secret.
    creator = nb["status"]["last_command_by"]
    assert creator["name"] == "administrator" and creator["token_id"] in history
    assert stack.admin_token not in history
    assert stack.secrets["s3_secret_key"] not in history
    assert stack.secrets["s3_access_key"] not in history

    [container] = notebooks.containers(nid)
    # ro volume pulled and read-only; rw volume pulled and writable
    assert _exec(container, "cat /workspace/data/a.csv") == "x,y\n1,2\n"
    assert _exec(container, "test -f /workspace/data/sub/b.bin && echo ok").strip() == "ok"
    code, _ = container.exec_run(["sh", "-c", "echo no > /workspace/data/new.txt"])
    assert code != 0
    assert _exec(container, "cat /workspace/out/old.txt") == "from before"
    # work written inside the container: a binary file with its exec bit, a nested file
    digest = _exec(
        container,
        "mkdir -p /workspace/proj/deep && head -c 300000 /dev/urandom > /workspace/proj/model.bin"
        " && chmod 755 /workspace/proj/model.bin && echo hello > /workspace/proj/deep/notes.txt"
        " && echo result > /workspace/out/new.txt && rm /workspace/out/old.txt"
        " && sha256sum /workspace/proj/model.bin",
    ).split()[0]

    r = notebooks.command(nid, "stop")
    assert r.status_code == 202 and r.json()["status"]["state"] == "STOPPING"
    nb = notebooks.wait(nid, "STOPPED")
    assert nb["status"]["info"]["code"] == "STOPPED_BY_USER"
    assert notebooks.containers(nid) == []  # the container is gone (I3)
    # rw pushed without deleting remote objects; ro untouched; workspace saved without volumes
    out = bucket_keys(s3, data_out)
    assert out["results/new.txt"] == b"result\n" and out["results/old.txt"] == b"from before"
    assert set(bucket_keys(s3, data_in)) == {"train/a.csv", "train/sub/b.bin"}
    ws = bucket_keys(s3, "ainb-workspaces", workspace_prefix(notebooks.project, nid))
    names = {k.rsplit("/workspace/", 1)[1] for k in ws}
    assert "proj/model.bin" in names and "proj/deep/notes.txt" in names
    assert not any(n.startswith(("data/", "out/")) and n not in ("data/", "out/") for n in names)
    assert (
        hashlib.sha256(ws[next(k for k in ws if k.endswith("proj/model.bin"))]).hexdigest()
        == digest
    )
    # no host-local data is left behind
    assert not (stack.data_dir / "hosts" / "local" / "notebooks" / nid).exists()

    # 409s by state
    assert notebooks.command(nid, "stop").status_code == 409

    r = notebooks.command(nid, "start")
    assert r.status_code == 202 and r.json()["status"]["state"] == "STARTING"
    notebooks.wait(nid, "RUNNING")
    assert notebooks.command(nid, "start").status_code == 409
    [container] = notebooks.containers(nid)
    # the workspace comes back exactly, volumes are pulled again
    assert _exec(container, "sha256sum /workspace/proj/model.bin").split()[0] == digest
    assert _exec(container, "stat -c %a /workspace/proj/model.bin").strip() == "755"
    assert _exec(container, "cat /workspace/proj/deep/notes.txt") == "hello\n"
    assert (
        _exec(container, "cat /workspace/out/new.txt /workspace/out/old.txt")
        == "result\nfrom before"
    )
    assert _exec(container, "cat /workspace/data/a.csv") == "x,y\n1,2\n"

    # delete a RUNNING notebook: stopped first, then removed with its saved workspace
    r = notebooks.delete(nid)
    assert r.status_code == 202 and r.json()["status"]["state"] == "DELETING"
    notebooks.wait(nid, "DELETED")
    assert notebooks.get(nid).status_code == 404
    assert notebooks.command(nid, "start").status_code == 404
    assert notebooks.containers(nid) == []
    assert bucket_keys(s3, "ainb-workspaces", workspace_prefix(notebooks.project, nid)) == {}
    assert "results/new.txt" in bucket_keys(s3, data_out)


def test_unsecure_http_needs_no_token(notebooks: Notebooks) -> None:
    nb = notebooks.create(name="open", unsecure_http=True)
    nb = notebooks.wait(nb["id"], "RUNNING")
    assert "token=" not in nb["status"]["url"]
    base = nb["status"]["url"].split("/lab")[0]
    assert httpx.get(f"{base}/api/status").status_code == 200
    assert notebooks.delete(nb["id"]).status_code == 202
    notebooks.wait(nb["id"], "DELETED")


def test_nonzero_exit_is_failed_and_data_is_pushed(notebooks: Notebooks, s3) -> None:
    nb = notebooks.create(name="crashes")
    nid = nb["id"]
    notebooks.wait(nid, "RUNNING")
    [container] = notebooks.containers(nid)
    _exec(container, "echo precious > /workspace/precious.txt")
    container.kill(signal="SIGKILL")  # the editor's process dies: exit code 137
    nb = notebooks.wait(nid, "FAILED")
    assert nb["status"]["info"]["code"] == "EXIT_CODE_137"
    assert "137" in nb["status"]["info"]["message"]
    ws = bucket_keys(s3, "ainb-workspaces", workspace_prefix(notebooks.project, nid))
    assert any(k.endswith("/precious.txt") and v == b"precious\n" for k, v in ws.items())
    assert notebooks.containers(nid) == []
    # FAILED can be started again, with the workspace restored
    assert notebooks.command(nid, "start").status_code == 202
    notebooks.wait(nid, "RUNNING")
    [container] = notebooks.containers(nid)
    assert _exec(container, "cat /workspace/precious.txt") == "precious\n"
    notebooks.delete(nid)
    notebooks.wait(nid, "DELETED")


def test_missing_image_is_an_error_with_the_build_command(notebooks: Notebooks) -> None:
    nb = notebooks.create(name="noimage", framework={"id": "broken"})
    nb = notebooks.wait(nb["id"], "ERROR")
    assert nb["status"]["info"]["code"] == "IMAGE_NOT_FOUND"
    assert "images/build.sh" in nb["status"]["info"]["message"]
    assert notebooks.containers(nb["id"]) == []
    notebooks.delete(nb["id"])
    notebooks.wait(nb["id"], "DELETED")


def test_unreadable_volume_fails_and_starts_nothing(notebooks: Notebooks) -> None:
    nb = notebooks.create(name="nobucket", volumes=["no-such-bucket-here@local:/workspace/d:ro"])
    nb = notebooks.wait(nb["id"], "FAILED")
    assert nb["status"]["info"]["code"] == "DATA_SYNC_FAILED"
    assert "no-such-bucket-here" in nb["status"]["info"]["message"]
    assert notebooks.containers(nb["id"]) == []
    notebooks.delete(nb["id"])
    notebooks.wait(nb["id"], "DELETED")


def test_unreachable_storage_is_an_error_after_retries(notebooks: Notebooks) -> None:
    nb = notebooks.create(name="nostorage", volumes=["some-bucket@down:/workspace/d:ro"])
    nb = notebooks.wait(nb["id"], "ERROR", timeout=180)
    assert nb["status"]["info"]["code"] == "STORAGE_UNAVAILABLE"
    assert "some-bucket" in nb["status"]["info"]["message"]
    assert notebooks.containers(nb["id"]) == []
    notebooks.delete(nb["id"])
    notebooks.wait(nb["id"], "DELETED")


def test_notebooks_started_together_each_get_their_own_editor(notebooks: Notebooks) -> None:
    # Each editor listens on a socket of its own notebook's directory: none can take
    # another's, however close together they start.
    ids = [notebooks.create(name=f"twin{i}")["id"] for i in range(3)]
    running = [notebooks.wait(nid, "RUNNING")["status"] for nid in ids]
    assert len({status["endpoint"] for status in running}) == 3
    assert all(status["endpoint"].startswith("unix:/") for status in running)
    urls = [status["url"] for status in running]
    time.sleep(3)
    for nid, url in zip(ids, urls, strict=True):
        assert notebooks.get(nid).json()["status"]["state"] == "RUNNING"
        assert httpx.get(url).status_code == 200
    for nid in ids:
        notebooks.delete(nid)
    for nid in ids:
        notebooks.wait(nid, "DELETED")
