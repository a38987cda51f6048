"""A VS Code (code-server) notebook end to end: created like any other, protected by its
token, and its workspace (with VS Code's own settings) survives a stop and a start."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs

import docker
import httpx
import pytest
from temporalio.client import Client

from domain import search_attributes as sa
from domain.config import VSCODE_IMAGE
from domain.ids import workflow_id
from tests.integration.conftest import REQUIRE_DOCKER, Notebooks
from worker.stack import Stack

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def vscode_image(docker_client) -> None:
    try:
        docker_client.images.get(VSCODE_IMAGE)
    except docker.errors.ImageNotFound:
        problem = f"image {VSCODE_IMAGE} is missing: bash images/build-vscode.sh"
        if REQUIRE_DOCKER:
            pytest.fail(problem)
        pytest.skip(problem)


def _operator_view(stack: Stack, project: str, notebook_id: str) -> tuple[dict, str]:
    """What the Temporal Web UI shows of a notebook: search attributes and summary."""

    async def describe():
        client = await Client.connect(stack.temporal_address)
        desc = await client.get_workflow_handle(workflow_id(project, notebook_id)).describe()
        return desc.typed_search_attributes, await desc.static_summary()

    attrs, summary = asyncio.run(describe())
    keys = (sa.STATE, sa.PROJECT, sa.EDITOR, sa.FLAVOR, sa.HOST)
    return {k.name: attrs.get(k) for k in keys}, summary or ""


def _exec(container, script: str) -> str:
    code, output = container.exec_run(["sh", "-c", script])
    assert code == 0, output.decode()
    return output.decode()


def test_vscode_notebook_login_and_workspace_across_stop_start(
    notebooks: Notebooks, vscode_image, stack: Stack
) -> None:
    nb = notebooks.create(name="code", editor="vscode")
    nid = nb["id"]
    nb = notebooks.wait(nid, "RUNNING", timeout=180)
    attrs, summary = _operator_view(stack, notebooks.project, nid)
    assert attrs == {
        "NotebookState": "RUNNING",
        "NotebookProject": notebooks.project,
        "NotebookEditor": "vscode",
        "NotebookFlavor": "ai1-1-cpu",
        "NotebookHost": nb["status"]["host"],
    }
    assert "code" in summary and "vscode" in summary
    base, _, query = nb["status"]["url"].partition("?")
    base = base.rstrip("/")
    token = parse_qs(query)["token"][0]

    # Protected: a stranger is refused by the gateway, never shown the editor's login.
    for path in ("/healthz", "/", "/login"):
        assert httpx.get(f"{base}{path}").status_code == 401, path
    # The link opens VS Code signed in: the gateway signs in to code-server with the
    # editor's own password, which never leaves the platform (the link's token is not it).
    with httpx.Client() as browser:
        opened = browser.get(nb["status"]["url"])
        assert opened.status_code == 302 and "folder=/workspace" in opened.headers["location"]
        editor = browser.get(f"{base}/", follow_redirects=True)
        assert editor.status_code == 200 and "vscode" in editor.text.lower()
        assert "code-server-session" not in str(browser.cookies.jar)  # the gateway's only
    assert httpx.get(f"{base}/healthz", params={"token": token}).status_code == 200

    [container] = notebooks.containers(nid)
    _exec(container, "echo kept > /workspace/notes.txt")
    # VS Code keeps its settings with the workspace, so they travel with it too.
    _exec(container, "test -f /workspace/.vscode-server-data/data/User/settings.json")

    assert notebooks.command(nid, "stop").status_code == 202
    notebooks.wait(nid, "STOPPED")
    assert notebooks.containers(nid) == []
    assert notebooks.command(nid, "start").status_code == 202
    nb = notebooks.wait(nid, "RUNNING", timeout=180)
    [container] = notebooks.containers(nid)
    assert _exec(container, "cat /workspace/notes.txt") == "kept\n"
    assert httpx.get(f"{base}/healthz", params={"token": token}).is_success

    assert notebooks.delete(nid).status_code == 202
    notebooks.wait(nid, "DELETED")
    assert notebooks.containers(nid) == []
