"""Each notebook at its own origin: the gateway forwards HTTP and WebSocket through the
host agent's tunnel to wherever the editor runs now, lets in the notebook's token or an
API token of its project, and nothing from another origin."""

from __future__ import annotations

import json
import time
from urllib.parse import parse_qs

import httpx
import pytest
from jupyter_kernel_client import JupyterKernelClient
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from domain.gateway import legacy_prefix
from tests.integration.conftest import PROJECT_API_TOKEN, Notebooks
from worker.stack import Stack

pytestmark = pytest.mark.docker


def _split(url: str) -> tuple[str, str]:
    """(the notebook's origin, its token) from status.url."""
    base, _, query = url.partition("?")
    return base.removesuffix("/lab"), parse_qs(query)["token"][0]


def test_jupyterlab_at_its_own_origin_kernel_over_websocket(
    notebooks: Notebooks, stack: Stack
) -> None:
    nb = notebooks.create(name="gw")
    nid = nb["id"]
    nb = notebooks.wait(nid, "RUNNING")
    url = nb["status"]["url"]
    root, token = _split(url)
    # The notebook's own origin, on the API's port; the editor itself is a socket on its host.
    assert root == f"http://{nid}.localhost:{stack.ports.api}"
    assert nb["status"]["endpoint"].startswith("unix:/")

    # The token link opens JupyterLab itself, signed in, and leaves a host-only cookie.
    with httpx.Client(timeout=30) as browser:
        page = browser.get(url)
        assert page.status_code == 200 and "JupyterLab" in page.text
        cookie = next(c for c in browser.cookies.jar if c.name == f"ainb-gw-{nid}")
        assert not cookie.domain_specified and cookie.path == "/"
        assert browser.get(root + "/api/status").status_code == 200
        assert browser.get(root + "/api/contents").json()["type"] == "directory"
    # No credentials: refused here, nothing reaches the editor's own login; nor does a
    # wrong token.
    anonymous = httpx.get(root + "/api/status")
    assert anonymous.status_code == 401 and "status.url" in anonymous.json()["error"]
    wrong = httpx.get(root + "/api/status", headers={"Authorization": "token nope"})
    assert wrong.status_code == 401 and nid in wrong.json()["error"]
    not_ascii = httpx.get(root + "/api/status", params={"token": "jeton-é"})
    assert not_ascii.status_code == 401
    # An API token of the project opens it too (sent as a bearer header).
    by_api_token = httpx.get(
        root + "/api/status", headers={"Authorization": f"Bearer {PROJECT_API_TOKEN}"}
    )
    assert by_api_token.status_code == 200
    # A write goes through (the editor's own XSRF check is satisfied by the token).
    put = httpx.put(
        root + "/api/contents/hello.txt",
        headers={"Authorization": f"token {token}"},
        json={"type": "file", "format": "text", "content": "hi"},
    )
    assert put.status_code in (200, 201), put.text

    # A real Jupyter client runs code in a kernel over the gateway's WebSocket; a
    # terminal opens too. The editor's token is in neither's environment.
    with JupyterKernelClient(server_url=root, token=token) as kernel:
        reply = kernel.execute("1+1")
        assert reply["status"] == "ok"
        assert reply["outputs"][0]["data"]["text/plain"] == "2"
        env = kernel.execute(f"import os; print({token!r} in repr(dict(os.environ)))")
        assert env["outputs"][0]["text"].strip() == "False", env
    terminal = httpx.post(root + "/api/terminals", headers={"Authorization": f"token {token}"})
    assert terminal.status_code == 200, terminal.text
    name = terminal.json()["name"]
    ws = "ws" + root.removeprefix("http") + f"/terminals/websocket/{name}?token={token}"
    with connect(ws, origin=root) as term:
        term.send('["stdin", "id -u; echo done-$((6*7))\\r"]')
        seen = ""
        while "done-42" not in seen:
            kind, *rest = json.loads(term.recv(timeout=30))
            if kind == "stdout":
                seen += rest[0]
        assert "1000" in seen

    # The address stays the same across a stop and a start.
    assert notebooks.command(nid, "stop").status_code == 202
    notebooks.wait(nid, "STOPPED")
    stopped = httpx.get(root + "/api/status", headers={"Authorization": f"token {token}"})
    assert stopped.status_code == 503 and "STOPPED" in stopped.json()["error"]
    assert notebooks.command(nid, "start").status_code == 202
    again = notebooks.wait(nid, "RUNNING")
    assert again["status"]["url"] == url
    status = httpx.get(root + "/api/status", headers={"Authorization": f"token {token}"})
    assert status.status_code == 200

    # A rotation ends the old link and every session opened with it; the editor runs on.
    with httpx.Client(timeout=30) as browser:
        assert browser.get(url).status_code == 200  # a session: the gateway's cookie
        rotated = notebooks.api.post(f"{notebooks.base}/{nid}/token/rotate")
        assert rotated.status_code == 200, rotated.text
        new_url = rotated.json()["status"]["url"]
        assert new_url != url and rotated.json()["status"]["state"] == "RUNNING"
        stale = browser.get(root + "/api/status")
        assert stale.status_code == 401 and "rotation" in stale.json()["error"]
    assert httpx.get(url).status_code == 401
    assert httpx.get(new_url).status_code == 200
    assert rotated.json()["status"]["last_command_by"]["name"] == "administrator"
    with JupyterKernelClient(server_url=root, token=PROJECT_API_TOKEN) as kernel:
        assert kernel.execute("print(open('hello.txt').read())")["status"] == "ok"

    # The old path on the API's origin only sends people on to the notebook's origin.
    old = httpx.get(stack.api_url + legacy_prefix(notebooks.project, nid) + "lab?token=t")
    assert old.status_code == 307 and old.headers["location"] == f"{root}/lab?token=t"
    # Only a notebook id becomes a host name there: no redirect anywhere else.
    elsewhere = httpx.get(stack.api_url + f"/notebooks/{notebooks.project}/evil.example%23/lab")
    assert elsewhere.status_code == 404 and "location" not in elsewhere.headers

    assert notebooks.delete(nid).status_code == 202
    notebooks.wait(nid, "DELETED")
    # Gone from its origin too, once the gateway's route cache (2 s) has moved on.
    deadline = time.monotonic() + 5
    while (gone := httpx.get(root + "/api/status")).status_code != 404:
        assert time.monotonic() < deadline and gone.status_code in (401, 503), gone.text
        time.sleep(0.2)
    # The links and WebSockets above carried tokens in their query: no log holds one.
    logs = (stack.data_dir / "logs" / "api.log").read_text()
    assert "token=***" in logs
    assert token not in logs and PROJECT_API_TOKEN not in logs


def test_other_origins_get_nothing_from_a_notebook(notebooks: Notebooks, stack: Stack) -> None:
    a, b = (notebooks.create(name=f"origin-{n}")["id"] for n in "ab")
    nb_a, nb_b = (notebooks.wait(nid, "RUNNING") for nid in (a, b))
    root_a, _ = _split(nb_a["status"]["url"])
    root_b, token_b = _split(nb_b["status"]["url"])
    with httpx.Client(timeout=30) as browser:
        assert browser.get(nb_b["status"]["url"]).status_code == 200  # B's cookie is set
        # A page of notebook A (or of the API) asking B, with the browser's cookie for B.
        for origin in (root_a, stack.api_url, "http://elsewhere.example"):
            r = browser.get(root_b + "/api/contents", headers={"Origin": origin})
            assert r.status_code == 403, (origin, r.status_code)
            r = browser.post(root_b + "/api/kernels", headers={"Origin": origin})
            assert r.status_code == 403
        no_cors = browser.get(
            root_b + "/api/contents",
            headers={"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "no-cors"},
        )
        assert no_cors.status_code == 403
        # B's own pages still work, and so does a link to B followed from anywhere.
        assert browser.get(root_b + "/api/contents", headers={"Origin": root_b}).is_success
        link = browser.get(
            root_b + "/lab",
            headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"},
        )
        assert link.status_code == 200
    # A WebSocket from another origin is refused, even with B's token.
    ws_b = "ws" + root_b.removeprefix("http") + f"/api/events/subscribe?token={token_b}"
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_b, origin=root_a)
    assert refused.value.response.status_code == 403
    # The API's origin serves no editor content, whatever the path.
    assert httpx.get(stack.api_url + "/lab").status_code == 404
    assert httpx.get(stack.api_url + "/api/contents").status_code == 404
    for nid in (a, b):
        notebooks.delete(nid)
    for nid in (a, b):
        notebooks.wait(nid, "DELETED")


def test_unknown_notebooks_are_404(stack: Stack) -> None:
    unknown = f"http://{'0' * 32}.localhost:{stack.ports.api}"
    assert httpx.get(unknown + "/lab").status_code == 404
