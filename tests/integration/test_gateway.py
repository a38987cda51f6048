"""One stable address per notebook: the gateway forwards HTTP and WebSocket to wherever the
editor runs now, and lets in the notebook's token or an API token of its project."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from jupyter_kernel_client import JupyterKernelClient
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from domain.gateway import gateway_prefix
from tests.integration.conftest import PROJECT_API_TOKEN, Notebooks
from worker.stack import Stack

pytestmark = pytest.mark.docker


def _split(url: str) -> tuple[str, str]:
    """(the notebook's gateway root, its token) from status.url."""
    base, _, query = url.partition("?")
    root = base.removesuffix("lab")
    return root, parse_qs(query)["token"][0]


def test_jupyterlab_through_the_gateway_kernel_over_websocket(
    notebooks: Notebooks, stack: Stack
) -> None:
    nb = notebooks.create(name="gw")
    nid = nb["id"]
    nb = notebooks.wait(nid, "RUNNING")
    url = nb["status"]["url"]
    root, token = _split(url)
    # The address is the API's, under the notebook's own prefix; the editor's is elsewhere.
    assert root == stack.api_url + gateway_prefix(notebooks.project, nid)
    assert urlsplit(nb["status"]["endpoint"]).port != urlsplit(stack.api_url).port

    # The token link opens JupyterLab itself, signed in, and leaves a cookie for the rest.
    with httpx.Client(timeout=30) as browser:
        page = browser.get(url)
        assert page.status_code == 200 and "JupyterLab" in page.text
        assert browser.get(root + "api/status").status_code == 200
        assert browser.get(root + "api/contents").json()["type"] == "directory"
    # No credentials: the editor's own protection answers; a wrong token is refused here.
    assert httpx.get(root + "api/status").status_code == 403
    wrong = httpx.get(root + "api/status", headers={"Authorization": "token nope"})
    assert wrong.status_code == 401 and nid in wrong.json()["error"]
    # An API token of the project opens it too (sent as a bearer header).
    by_api_token = httpx.get(
        root + "api/status", headers={"Authorization": f"Bearer {PROJECT_API_TOKEN}"}
    )
    assert by_api_token.status_code == 200
    # A write goes through (the editor's own XSRF check is satisfied by the token).
    put = httpx.put(
        root + "api/contents/hello.txt",
        headers={"Authorization": f"token {token}"},
        json={"type": "file", "format": "text", "content": "hi"},
    )
    assert put.status_code in (200, 201), put.text

    # A real Jupyter client runs code in a kernel over the gateway's WebSocket.
    with JupyterKernelClient(server_url=root.rstrip("/"), token=token) as kernel:
        reply = kernel.execute("1+1")
    assert reply["status"] == "ok"
    assert reply["outputs"][0]["data"]["text/plain"] == "2"

    # The address stays the same across a stop and a start.
    assert notebooks.command(nid, "stop").status_code == 202
    notebooks.wait(nid, "STOPPED")
    stopped = httpx.get(root + "api/status", headers={"Authorization": f"token {token}"})
    assert stopped.status_code == 503 and "STOPPED" in stopped.json()["error"]
    assert notebooks.command(nid, "start").status_code == 202
    again = notebooks.wait(nid, "RUNNING")
    assert again["status"]["url"] == url
    status = httpx.get(root + "api/status", headers={"Authorization": f"token {token}"})
    assert status.status_code == 200
    with JupyterKernelClient(server_url=root.rstrip("/"), token=PROJECT_API_TOKEN) as kernel:
        assert kernel.execute("print(open('hello.txt').read())")["status"] == "ok"

    assert notebooks.delete(nid).status_code == 202
    notebooks.wait(nid, "DELETED")
    assert httpx.get(root + "api/status").status_code == 404


def test_gateway_refuses_cross_site_websockets_and_unknown_notebooks(
    notebooks: Notebooks, stack: Stack
) -> None:
    unknown = httpx.get(stack.api_url + gateway_prefix(notebooks.project, "0" * 32) + "lab")
    assert unknown.status_code == 404
    # The bare prefix is sent on to the prefix with a slash (relative links need it).
    bare = httpx.get(stack.api_url + gateway_prefix(notebooks.project, "0" * 32).rstrip("/"))
    assert bare.status_code == 307 and bare.headers["location"].endswith("/")

    # A page of another site cannot open a WebSocket with the browser's cookie.
    ws_url = "ws" + stack.api_url.removeprefix("http") + gateway_prefix(notebooks.project, "0" * 32)
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url + "api/events/subscribe", origin="http://elsewhere.example")
    assert refused.value.response.status_code == 403
