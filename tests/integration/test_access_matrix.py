"""Who may do what, on the real stack: every route (REST, gateway HTTP and WebSocket, logs,
usage, hosts, capabilities, tokens, audit) asked by every kind of caller, the expected
answer computed from one table; then revocation, expiry and renewal, and what a browser
page of another site (or a DNS-rebinding one) gets."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from ledger.engine import Engine
from ledger.store import ledger_engine
from tests.integration.conftest import Notebooks
from tests.support import eventually
from worker.stack import Stack

pytestmark = pytest.mark.docker

TEAM = {"team": "vision"}
PYTHON = {"name": "acl", "framework": {"id": "python"}, "labels": TEAM}
CPU = {"flavor": "ai1-1-cpu", "cpu": 1}
# No host here offers GPUs: such a notebook waits in the queue, STARTING, with no
# container, which makes creating and deleting one cheap.
QUEUED = {**PYTHON, "resources": {"flavor": "ai1-1-gpu", "gpu": 1}}
CALLERS = ("none", "bad", "read", "operator", "admin", "other_project", "mismatch")


@dataclass
class World:
    stack: Stack
    project: str
    tokens: dict[str, str | None]
    running: str  # RUNNING, labelled team=vision
    stopped: str  # STOPPED, labelled team=vision
    origin: str  # the running notebook's origin

    def base(self) -> str:
        return f"/v1/projects/{self.project}/notebooks"

    def headers(self, who: str) -> dict[str, str]:
        token = self.tokens[who]
        return {"authorization": f"Bearer {token}"} if token else {}


def _issue(admin: httpx.Client, project: str, role: str, selector: dict | None = None) -> str:
    body = {"name": f"{role}-{uuid.uuid4().hex[:4]}", "role": role}
    r = admin.post(
        f"/v1/projects/{project}/tokens", json={**body, "label_selector": selector or {}}
    )
    assert r.status_code == 201, r.text
    return r.json()["token"]


@pytest.fixture(scope="module")
def world(stack: Stack, docker_client) -> Iterator[World]:
    project = f"acl-{uuid.uuid4().hex[:6]}"
    with stack.api_client(timeout=60) as admin:
        nbs = Notebooks(admin, project, docker_client)
        running = nbs.create(**PYTHON, resources=CPU)["id"]
        stopped = nbs.create(**QUEUED)["id"]
        assert nbs.command(stopped, "stop").status_code == 202
        nbs.wait(stopped, "STOPPED")
        url = nbs.wait(running, "RUNNING", timeout=180)["status"]["url"]
        tokens: dict[str, str | None] = {
            "none": None,
            "bad": "ainb_0123456789ab_" + "x" * 43,
            "read": _issue(admin, project, "read"),
            "operator": _issue(admin, project, "operator"),
            "admin": stack.admin_token,
            "other_project": _issue(admin, f"{project}-b", "operator"),
            "mismatch": _issue(admin, project, "operator", {"team": "nlp"}),
        }
        yield World(stack, project, tokens, running, stopped, url.split("/lab")[0])
        for nid in (running, stopped):
            nbs.delete(nid)
        for nid in (running, stopped):
            nbs.wait(nid, "DELETED", timeout=180)


# ------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Row:
    name: str
    # Who may: "any" valid token, "read" and up, "operator" and up, "admin" only.
    level: str
    ok: int  # what a caller who may gets (the request is built so that it is harmless)
    # What an operator of the project limited to labels the notebook lacks gets.
    mismatch: int
    call: Callable[[World, str, dict[str, str]], int]


def _rest(method: str, path: str, body: dict | None = None, fresh: str | None = None):
    """A REST call; `{p}` is the project, `{R}`/`{S}` the running/stopped notebook, `{F}` a
    notebook (kind "notebook") or token (kind "token") made for this one call."""

    def call(w: World, who: str, headers: dict[str, str]) -> int:
        with w.stack.api_client(timeout=60) as admin:
            made = _make(admin, w.project, fresh)
            url = path.format(p=w.project, R=w.running, S=w.stopped, F=made or "")
            r = httpx.request(method, w.stack.api_url + url, json=body, headers=headers, timeout=60)
            if fresh == "notebook" and made:
                _gone(admin, w.project, made)
            if r.status_code == 201 and method == "POST" and url.endswith("/notebooks"):
                _gone(admin, w.project, r.json()["id"])
            assert r.status_code < 500, r.text
            assert r.headers["content-type"].startswith(("application/json", "text/plain"))
            return r.status_code

    return call


def _make(admin: httpx.Client, project: str, kind: str | None) -> str | None:
    if kind == "notebook":
        r = admin.post(f"/v1/projects/{project}/notebooks", json=QUEUED)
        assert r.status_code == 201, r.text
        return r.json()["id"]
    if kind == "token":
        return _issue(admin, project, "read").split("_")[1]
    return None


def _gone(admin: httpx.Client, project: str, notebook_id: str) -> None:
    """Deleted, and out of the project's GPU quota, before the next call makes another."""
    path = f"/v1/projects/{project}/notebooks/{notebook_id}"
    admin.delete(path)
    eventually(
        lambda: admin.get(path).status_code == 404,
        timeout=60,
        interval=0.2,
        what=f"{notebook_id} to be deleted",
    )


def _gateway_http(w: World, who: str, headers: dict[str, str]) -> int:
    return httpx.get(w.origin + "/api/status", headers=headers, timeout=30).status_code


def _gateway_write(w: World, who: str, headers: dict[str, str]) -> int:
    """A new file (untitled*.txt) in the notebook: a write, which the gateway lets a read
    token through to and JupyterLab then refuses it."""
    r = httpx.post(w.origin + "/api/contents", json={"type": "file"}, headers=headers)
    return r.status_code


def _gateway_websocket(w: World, who: str, headers: dict[str, str]) -> int:
    url = "ws" + w.origin.removeprefix("http") + "/api/events/subscribe"
    try:
        with connect(url, origin=w.origin, additional_headers=headers, open_timeout=30):
            return 101
    except InvalidStatus as refused:
        return refused.response.status_code


N = "/v1/projects/{p}/notebooks"
TABLE = [
    Row("capabilities", "any", 200, 200, _rest("GET", "/v1/capabilities/frameworks")),
    Row("flavors", "any", 200, 200, _rest("GET", "/v1/capabilities/flavors")),
    Row("hosts", "admin", 200, 403, _rest("GET", "/v1/hosts")),
    Row("list", "read", 200, 200, _rest("GET", N)),
    Row("get", "read", 200, 404, _rest("GET", N + "/{R}")),
    Row("logs", "read", 200, 404, _rest("GET", N + "/{R}/logs?tail=5")),
    Row("usage", "read", 200, 404, _rest("GET", N + "/{R}/usage")),
    Row("project usage", "read", 200, 200, _rest("GET", "/v1/projects/{p}/usage")),
    Row("audit", "read", 200, 403, _rest("GET", "/v1/projects/{p}/audit")),
    Row("create", "operator", 201, 403, _rest("POST", N, QUEUED)),
    Row("start", "operator", 409, 404, _rest("POST", N + "/{R}/start")),  # it runs
    Row("stop", "operator", 409, 404, _rest("POST", N + "/{S}/stop")),  # it is stopped
    Row("delete", "operator", 202, 404, _rest("DELETE", N + "/{F}", fresh="notebook")),
    Row("patch", "operator", 200, 404, _rest("PATCH", N + "/{R}", {"timeout_auto_restart": False})),
    Row("labels", "operator", 200, 404, _rest("PUT", N + "/{R}/labels", {"labels": TEAM})),
    # A volume it does not have: accepted by the rules of access, refused by the notebook.
    Row("datasync", "operator", 422, 404,
        _rest("POST", N + "/{R}/datasync", {"direction": "pull", "volume": "/nope"})),
    Row("rotate token", "operator", 200, 404, _rest("POST", N + "/{R}/token/rotate")),
    Row("tokens create", "operator", 201, 403,
        _rest("POST", "/v1/projects/{p}/tokens", {"name": "made", "role": "read"})),
    Row("tokens list", "operator", 200, 403, _rest("GET", "/v1/projects/{p}/tokens")),
    Row("tokens renew", "operator", 200, 403,
        _rest("POST", "/v1/projects/{p}/tokens/{F}/renew", fresh="token")),
    Row("tokens revoke", "operator", 200, 403,
        _rest("DELETE", "/v1/projects/{p}/tokens/{F}", fresh="token")),
    # A read token opens JupyterLab read-only (not VS Code, which has no such mode).
    Row("gateway http", "read", 200, 404, _gateway_http),
    Row("gateway write", "operator", 201, 404, _gateway_write),
    Row("gateway websocket", "operator", 101, 404, _gateway_websocket),
]  # fmt: skip


def expected(row: Row, who: str) -> int:
    if who in ("none", "bad"):
        return 401
    if who == "admin" or row.level == "any":
        return row.ok
    if row.level == "admin" or who == "other_project":
        return 403
    if who == "read":
        return row.ok if row.level == "read" else 403
    if who == "mismatch":
        return row.mismatch
    return row.ok


def test_every_route_answers_every_caller_as_the_table_says(world: World) -> None:
    got: dict[tuple[str, str], int] = {}
    for row in TABLE:
        for who in CALLERS:
            got[(row.name, who)] = row.call(world, who, world.headers(who))
    wrong = {
        key: (status, expected(row, key[1]))
        for row in TABLE
        for key, status in got.items()
        if key[0] == row.name and status != expected(row, key[1])
    }
    assert not wrong, f"(route, caller): (got, expected): {wrong}"


def test_a_selector_sees_only_its_notebooks(world: World) -> None:
    listed = httpx.get(
        world.stack.api_url + world.base(), headers=world.headers("mismatch"), timeout=60
    )
    assert listed.status_code == 200 and listed.json() == []
    mine = httpx.get(
        world.stack.api_url + world.base(),
        params={"label": "team=vision"},
        headers=world.headers("operator"),
        timeout=60,
    )
    assert {nb["id"] for nb in mine.json()} >= {world.running, world.stopped}
    # A label change may not take a notebook out of the token's reach.
    vision = _issue_with(world, "operator", TEAM)
    moved = httpx.put(
        f"{world.stack.api_url}{world.base()}/{world.running}/labels",
        json={"labels": {"team": "elsewhere"}},
        headers={"authorization": f"Bearer {vision}"},
        timeout=60,
    )
    assert moved.status_code == 403 and moved.json()["field"] == "labels"
    # ...nor may a token hand out more than it has.
    more = httpx.post(
        f"{world.stack.api_url}/v1/projects/{world.project}/tokens",
        json={"name": "wider", "role": "operator"},
        headers=world.headers("read"),
        timeout=60,
    )
    assert more.status_code == 403


def _issue_with(world: World, role: str, selector: dict | None = None) -> str:
    with world.stack.api_client(timeout=60) as admin:
        return _issue(admin, world.project, role, selector)


def test_state_changes_are_audited_by_token_never_by_secret(world: World) -> None:
    token = _issue_with(world, "operator")
    token_id = token.split("_")[1]
    r = httpx.patch(
        f"{world.stack.api_url}{world.base()}/{world.running}",
        json={"timeout_auto_restart": False},
        headers={"authorization": f"Bearer {token}"},
        timeout=60,
    )
    assert r.status_code == 200
    assert r.json()["status"]["last_command_by"]["token_id"] == token_id
    with world.stack.api_client(timeout=60) as admin:
        entries = admin.get(f"/v1/projects/{world.project}/audit").json()
    mine = [e for e in entries if e["token_id"] == token_id]
    assert [(e["action"], e["notebook_id"], e["status"]) for e in mine] == [
        ("patch", world.running, 200)
    ]
    # Refusals are recorded too (the matrix's read token tried to create).
    assert any(e["action"] == "create" and e["status"] == 403 for e in entries)
    assert not any(t and t in str(entries) for t in world.tokens.values())


def _db(stack: Stack) -> Engine:
    """Another process's write to the token store, on the stack's ledger database."""
    return ledger_engine(stack.ledger)


CACHE_S = 5  # api.auth.TOKEN_CACHE_S: what another API process may take to notice


def _status_until(call: Callable[[], int], want: int, within_s: float) -> float:
    started = time.monotonic()
    eventually(lambda: call() == want, timeout=within_s, interval=0.2, what=f"a {want}")
    return time.monotonic() - started


def test_revocation_and_expiry_take_effect_within_one_cache_interval(world: World) -> None:
    def lister(token: str) -> Callable[[], int]:
        def call() -> int:
            headers = {"authorization": f"Bearer {token}"}
            url = world.stack.api_url + world.base()
            return httpx.get(url, headers=headers, timeout=30).status_code

        return call

    # Revoked through the API: refused at once.
    token = _issue_with(world, "read")
    assert lister(token)() == 200
    with world.stack.api_client(timeout=60) as admin:
        revoked = admin.delete(f"/v1/projects/{world.project}/tokens/{token.split('_')[1]}")
    assert revoked.json()["state"] == "revoked"
    assert lister(token)() == 401
    # Revoked or expired by another process (written straight into the store): within
    # one cache interval.
    for change in ("revoked_at", "expires_at"):
        token = _issue_with(world, "read")
        assert lister(token)() == 200
        past = datetime.now(UTC) - timedelta(seconds=1)
        engine = _db(world.stack)
        with engine.connect() as db:
            db.execute(
                f"UPDATE api_tokens SET {change} = ? WHERE id = ?",
                [engine.value(past), token[5:17]],
            )
        assert _status_until(lister(token), 401, CACHE_S + 2) <= CACHE_S + 1


def test_renew_keeps_the_tokens_id_and_rights(world: World) -> None:
    token = _issue_with(world, "operator", TEAM)
    token_id = token.split("_")[1]
    with world.stack.api_client(timeout=60) as admin:
        before = admin.get(f"/v1/projects/{world.project}/tokens/{token_id}").json()
        renewed = admin.post(
            f"/v1/projects/{world.project}/tokens/{token_id}/renew",
            json={"expires_in_s": 400 * 86400},
        )
        assert renewed.status_code == 422 and renewed.json()["field"] == "expires_in_s"
        renewed = admin.post(
            f"/v1/projects/{world.project}/tokens/{token_id}/renew",
            json={"expires_in_s": 200 * 86400},
        )
    assert renewed.status_code == 200, renewed.text
    after = renewed.json()
    assert after["expires_at"] > before["expires_at"]
    for key in ("id", "name", "role", "label_selector", "created_at", "created_by"):
        assert after[key] == before[key], key
    r = httpx.get(
        f"{world.stack.api_url}{world.base()}/{world.running}",
        headers={"authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert r.status_code == 200  # the same secret still works, with the same reach


# ------------------------------------------------------------------ browsers


def test_a_dns_rebinding_page_and_other_sites_are_refused(world: World) -> None:
    api = world.stack.api_url
    admin = world.headers("admin")
    count = len(httpx.get(api + world.base(), headers=admin, timeout=30).json())
    # A rebinding page reaches the API's address under its own name.
    rebinding = httpx.get(api + world.base(), headers={**admin, "host": "evil.example"})
    assert rebinding.status_code == 403 and "evil.example" in rebinding.json()["error"]
    # A page of another origin may not change anything, even holding a token.
    for extra in ({"origin": "http://evil.example"}, {"sec-fetch-site": "cross-site"}):
        r = httpx.post(api + world.base(), json=QUEUED, headers={**admin, **extra})
        assert r.status_code == 403, extra
    assert len(httpx.get(api + world.base(), headers=admin, timeout=30).json()) == count
    # ...while the API's own pages (the OpenAPI UI) may.
    own = httpx.post(api + f"{world.base()}/{world.stopped}/stop", headers={**admin, "origin": api})
    assert own.status_code == 409  # past the origin check: it is already stopped
    # CORS is off unless configured: no page of another site reads an answer.
    preflight = httpx.options(
        api + world.base(),
        headers={"origin": "http://evil.example", "access-control-request-method": "GET"},
    )
    assert "access-control-allow-origin" not in preflight.headers


def test_credentials_come_only_from_the_authorization_header(world: World) -> None:
    api = world.stack.api_url + world.base()
    token = world.tokens["admin"]
    assert httpx.get(api, params={"token": token}).status_code == 401
    assert httpx.get(api, cookies={"ainb-gw-x": str(token), "token": str(token)}).status_code == 401
    assert httpx.get(api, headers={"authorization": f"Basic {token}"}).status_code == 401
    # A token that is not ASCII is a wrong token (401), never an error.
    raw = httpx.get(api, headers=[(b"authorization", "Bearer jeton-é".encode("latin-1"))])
    assert raw.status_code == 401
    utf8 = httpx.get(api, headers=[(b"authorization", "Bearer jeton-é".encode())])
    assert utf8.status_code == 401
    gateway = httpx.get(world.origin + "/api/status", params={"token": "jeton-é"})
    assert gateway.status_code == 401


def test_a_read_token_opens_jupyterlab_read_only(world: World) -> None:
    reader, operator = world.headers("read"), world.headers("operator")
    origin = world.origin
    # Its holder sees the notebook's address, never the link's token (full access).
    seen = httpx.get(
        f"{world.stack.api_url}{world.base()}/{world.running}", headers=reader, timeout=30
    ).json()
    assert seen["status"]["url"] == origin + "/lab"
    listed = httpx.get(world.stack.api_url + world.base(), headers=reader, timeout=30).json()
    assert all("token=" not in (nb["status"]["url"] or "") for nb in listed)
    with httpx.Client(base_url=origin, timeout=30) as browser:
        page = browser.get("/lab", params={"token": world.tokens["read"]})
        assert page.status_code == 200 and "JupyterLab" in page.text
        # The session it opened is read-only too: files and listings, nothing more.
        assert browser.get("/api/contents").json()["type"] == "directory"
        assert browser.get("/api/kernels").status_code == 200
        for method, path, body in (
            (
                "PUT",
                "/api/contents/by-reader.txt",
                {"type": "file", "format": "text", "content": "x"},
            ),
            ("POST", "/api/kernels", {}),
            ("POST", "/api/terminals", None),
            ("GET", "/api/terminals", None),
        ):
            r = browser.request(method, path, json=body)
            assert r.status_code == 403, (method, path, r.status_code)
    # A kernel an operator started: the reader may see it, never talk to it.
    kernel = httpx.post(origin + "/api/kernels", json={}, headers=operator, timeout=60).json()
    try:
        url = "ws" + origin.removeprefix("http") + f"/api/kernels/{kernel['id']}/channels"
        with pytest.raises(InvalidStatus) as refused:
            with connect(url, origin=origin, additional_headers=reader, open_timeout=30):
                pass
        assert refused.value.response.status_code == 403
        with connect(url, origin=origin, additional_headers=operator, open_timeout=30):
            pass
    finally:
        httpx.delete(origin + f"/api/kernels/{kernel['id']}", headers=operator, timeout=60)
    gone = httpx.get(origin + "/api/contents/by-reader.txt", headers=operator, timeout=30)
    assert gone.status_code == 404


def test_the_tokens_inside_a_notebook_open_nothing(world: World, docker_client) -> None:
    """What a notebook's own code can read of its editor's credentials (the editor's token
    and its read-only token, in files of its user) opens nothing: not the notebook from
    outside through the gateway, not another notebook, not the REST API."""
    [container] = docker_client.containers.list(
        filters={"label": f"ai.ainb.notebook={world.running}"}
    )
    found = {}
    for name in ("jupyter-token", "jupyter-read-token"):
        code, out = container.exec_run(["sh", "-c", f"cat /tmp/ainb-editor*/{name}"], user="1000")
        assert code == 0, out
        found[name] = out.decode().strip()
    assert all(len(t) == 40 for t in found.values()) and len(set(found.values())) == 2
    api = world.stack.api_url + world.base()
    for token in found.values():
        for attempt in (
            httpx.get(world.origin + "/api/contents", params={"token": token}),
            httpx.get(world.origin + "/api/contents", headers={"authorization": f"token {token}"}),
            httpx.get(api, headers={"authorization": f"Bearer {token}"}),
        ):
            assert attempt.status_code == 401, attempt.text
