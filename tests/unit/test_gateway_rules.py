"""The gateway's rules without a network: which origin is whose, who is let in, what the
editor is sent."""

from __future__ import annotations

import asyncio
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr
from starlette.datastructures import Headers, QueryParams

from api.auth import Authenticator
from api.gateway import COOKIE_PREFIX, Gateway, Refused, Route, downstream_cookie
from domain.access import Role, new_token
from domain.config import Settings
from domain.gateway import notebook_url, origin_pattern, ready_path
from domain.spec import Editor
from domain.states import NotebookState
from domain.tokens import editor_read_token, editor_token, link_token, session_mac
from ledger.access_store import AccessStore, StoredToken

SECRET = "s3cret"
NID = "a" * 32
OTHER = "b" * 32


class FakeService:
    def editor_token(self, notebook_id: str) -> str:
        return editor_token(SECRET, notebook_id)


LINK = link_token(SECRET, "p", NID, 0)
_STORE = AccessStore(Path(tempfile.mkdtemp()) / "ledger.sqlite")


def _issue(role: Role, selector: dict[str, str] | None = None, project: str = "p") -> str:
    token_id, token, digest = new_token()
    now = datetime.now(UTC)
    _STORE.add(
        StoredToken(
            id=token_id,
            project=project,
            name=f"{role.value} token",
            role=role,
            selector=selector or {},
            secret_hash=digest,
            created_by="test",
            created_at=now,
            expires_at=now + timedelta(days=1),
        )
    )
    return token


READER = _issue(Role.READ)
VISION = _issue(Role.OPERATOR, {"team": "vision"})
NLP = _issue(Role.OPERATOR, {"team": "nlp"})


def _gateway(**settings) -> Gateway:
    values = {
        "token_secret": SecretStr(SECRET),
        "public_url": "https://api.example",
        "notebook_origin": "https://{id}.nb.example",
        "api_tokens": {"p": [SecretStr("api-tok")]},
        **settings,
    }
    config = Settings(**values)
    auth = Authenticator(config, _STORE)
    return Gateway(FakeService(), config, auth=auth)  # type: ignore[arg-type]


def _route(
    editor: Editor = Editor.JUPYTERLAB, unsecure: bool = False, generation: int = 0
) -> Route:
    return Route(
        "p", NID, editor, unsecure, NotebookState.RUNNING, "127.0.0.1:1", {"team": "vision"},
        generation,
    )  # fmt: skip


def _authorize(route: Route, query: dict, headers: dict, cookies: dict):
    return asyncio.run(_gateway().authorize(route, QueryParams(query), Headers(headers), cookies))


def _session(who: str, generation: int = 0) -> str:
    return f"{who}.{session_mac(SECRET, 'p', NID, generation, who)}"


def test_each_notebook_has_its_own_origin() -> None:
    # Embedded default: the API's port, under localhost (which browsers resolve to loopback).
    pattern = origin_pattern("http://127.0.0.1:8000")
    assert pattern == "http://{id}.localhost:8000"
    assert origin_pattern("https://ainb.example.com") == "https://{id}.ainb.example.com"
    assert origin_pattern("http://x", "https://{id}.nb.example.com/") == (
        "https://{id}.nb.example.com"
    )
    with pytest.raises(ValueError):
        origin_pattern("http://x", "https://nb.example.com/{id}")
    assert notebook_url(pattern, Editor.JUPYTERLAB, NID) == f"http://{NID}.localhost:8000/lab"
    assert notebook_url(pattern, Editor.VSCODE, NID) == f"http://{NID}.localhost:8000/"
    assert ready_path(Editor.JUPYTERLAB) == "/api/status"
    assert ready_path(Editor.VSCODE) == "/healthz"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        (f"{NID}.localhost:8000", NID),
        (f"{NID.upper()}.LOCALHOST:8000", NID),
        (f"{NID}.localhost:8001", None),  # another port is another origin
        (f"{NID}.localhost", None),
        ("127.0.0.1:8000", None),  # the API's own origin serves no editor
        (f"x{NID}.localhost:8000", None),
        (f"{NID}.localhost:8000.evil", None),
        (f"{NID[:-1]}.localhost:8000", None),
    ],
)
def test_hosts_name_notebooks_exactly(host: str, expected: str | None) -> None:
    gw = _gateway(notebook_origin="http://{id}.localhost:8000")
    assert gw.notebook_for_host(host) == expected


def test_the_default_port_may_be_left_out() -> None:
    gw = _gateway()
    assert gw.notebook_for_host(f"{NID}.nb.example") == NID
    assert gw.notebook_for_host(f"{NID}.nb.example:443") == NID
    assert gw.notebook_for_host(f"{NID}.nb.example:80") is None


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": f"https://{OTHER}.nb.example"},  # another notebook's page
        {"origin": "https://api.example"},  # the API's origin
        {"origin": f"http://{NID}.nb.example"},  # the same host, another scheme
        {"sec-fetch-site": "same-site", "sec-fetch-mode": "cors"},
        {"sec-fetch-site": "cross-site", "sec-fetch-mode": "no-cors"},
    ],
)
def test_other_origins_get_nothing(headers) -> None:
    with pytest.raises(Refused) as err:
        _gateway().check_origin(_route(), Headers(headers))
    assert err.value.status == 403


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"origin": f"https://{NID}.nb.example"},
        {"sec-fetch-site": "same-origin", "sec-fetch-mode": "cors"},
        {"sec-fetch-site": "none", "sec-fetch-mode": "navigate"},
        {"sec-fetch-site": "cross-site", "sec-fetch-mode": "navigate"},  # a link followed
    ],
)
def test_own_pages_and_links_pass(headers) -> None:
    _gateway().check_origin(_route(), Headers(headers))


def test_a_websocket_from_another_site_is_refused_even_as_navigation() -> None:
    with pytest.raises(Refused):
        _gateway().check_origin(
            _route(),
            Headers({"sec-fetch-site": "cross-site", "sec-fetch-mode": "navigate"}),
            websocket=True,
        )


@pytest.mark.parametrize(
    ("query", "headers", "cookies", "session"),
    [
        ({"token": LINK}, {}, {}, "link"),
        ({}, {"authorization": f"token {LINK}"}, {}, "link"),
        ({}, {"authorization": "Bearer api-tok"}, {}, "static-"),
        ({"token": VISION}, {}, {}, VISION.split("_")[1]),
        ({}, {}, {COOKIE_PREFIX + NID: _session("link")}, None),
        ({}, {}, {COOKIE_PREFIX + NID: _session(VISION.split("_")[1])}, None),
    ],
)
def test_who_is_let_in(query, headers, cookies, session) -> None:
    access = _authorize(_route(), query, headers, cookies)
    assert access.authorized and not access.read_only
    if session is None:
        assert access.session is None
    else:
        assert access.session is not None and access.session.startswith(session)


@pytest.mark.parametrize(
    "cookie",
    [
        "stale",
        _session("link", generation=1),  # another generation
        f"link.{session_mac(SECRET, 'p', OTHER, 0, 'link')}",  # another notebook's
        _session("0123456789ab"),  # a token id nobody issued
        "",
    ],
)
def test_without_a_valid_credential_nothing_reaches_the_editor(cookie) -> None:
    with pytest.raises(Refused) as err:
        _authorize(_route(), {}, {}, {COOKIE_PREFIX + NID: cookie} if cookie else {})
    assert err.value.status == 401


def test_the_editors_own_token_opens_nothing_but_does_not_spoil_a_session() -> None:
    # JupyterLab's pages carry its own token, which its scripts send back.
    own = {"authorization": f"token {editor_token(SECRET, NID)}"}
    with pytest.raises(Refused) as err:
        _authorize(_route(), {}, own, {})
    assert err.value.status == 401
    session = {COOKIE_PREFIX + NID: _session("link")}
    assert _authorize(_route(), {}, own, session).authorized


def test_a_rotation_ends_old_links_and_sessions() -> None:
    rotated = _route(generation=1)
    for query, cookies in (({"token": LINK}, {}), ({}, {COOKIE_PREFIX + NID: _session("link")})):
        with pytest.raises(Refused) as err:
            _authorize(rotated, query, {}, cookies)
        assert err.value.status == 401
    assert _authorize(rotated, {"token": link_token(SECRET, "p", NID, 1)}, {}, {}).authorized


@pytest.mark.parametrize(
    "credentials",
    [
        {"token": "wrong"},
        {"token": editor_token(SECRET, NID)},  # the editor's own: never accepted here
        {"token": link_token(SECRET, "p", OTHER, 0)},
        {"token": link_token(SECRET, "q", NID, 0)},
        {"token": "api-tok-other"},
        {"token": "é-not-ascii"},
    ],
)
def test_a_wrong_explicit_token_is_refused(credentials) -> None:
    with pytest.raises(Refused) as err:
        _authorize(_route(), credentials, {}, {})
    assert err.value.status == 401


@pytest.mark.parametrize(
    ("token", "editor", "status"),
    [
        (READER, Editor.VSCODE, 403),  # no read-only mode
        (NLP, Editor.JUPYTERLAB, 404),
        (_issue(Role.OPERATOR, project="q"), Editor.JUPYTERLAB, 403),
    ],
)
def test_api_tokens_open_only_what_they_may(token: str, editor: Editor, status: int) -> None:
    with pytest.raises(Refused) as err:
        _authorize(_route(editor), {"token": token}, {}, {})
    assert err.value.status == status


def test_a_read_token_opens_jupyterlab_read_only() -> None:
    access = _authorize(_route(), {"token": READER}, {}, {})
    assert access.authorized and access.read_only and access.session
    again = _authorize(_route(), {}, {}, {COOKIE_PREFIX + NID: access.session})
    assert again.authorized and again.read_only
    out = _gateway().upstream_headers(_route(), Headers({}), True, read_only=True)
    assert out["authorization"] == f"token {editor_read_token(SECRET, NID)}"


def test_an_api_token_only_opens_its_own_project() -> None:
    other = Route("q", NID, Editor.JUPYTERLAB, False, NotebookState.RUNNING, "127.0.0.1:1", {}, 0)
    with pytest.raises(Refused):
        _authorize(other, {}, {"authorization": "Bearer api-tok"}, {})


def test_a_revoked_tokens_sessions_end() -> None:
    token = _issue(Role.OPERATOR)
    token_id = token.split("_")[1]
    assert _authorize(_route(), {}, {}, {COOKIE_PREFIX + NID: _session(token_id)}).authorized
    _STORE.revoke(token_id, datetime.now(UTC))
    gw = _gateway()  # a fresh cache: another API process after TOKEN_CACHE_S
    with pytest.raises(Refused):
        asyncio.run(
            gw.authorize(
                _route(), QueryParams({}), Headers({}), {COOKIE_PREFIX + NID: _session(token_id)}
            )
        )


def test_the_editor_gets_its_own_credentials_not_the_api_token() -> None:
    gw = _gateway()
    own = f"https://{NID}.nb.example"
    incoming = Headers(
        {
            "host": f"{NID}.nb.example",
            "authorization": "Bearer api-tok",
            "origin": own,
            "cookie": f"{COOKIE_PREFIX}{NID}=x; _xsrf=abc",
            "connection": "keep-alive",
        }
    )
    out = gw.upstream_headers(_route(), incoming, authorized=True)
    assert out["authorization"] == f"token {editor_token(SECRET, NID)}"
    # Host and Origin are the notebook's own: the editor's origin check passes unchanged.
    assert out["origin"] == own and out["host"] == f"{NID}.nb.example"
    assert out["cookie"] == "_xsrf=abc"  # the gateway's cookie stays with the gateway
    assert "connection" not in out
    assert out["x-forwarded-proto"] == "https"
    vscode = gw.upstream_headers(_route(Editor.VSCODE), incoming, authorized=True)
    assert "authorization" not in vscode and "code-server-session=$argon2" in vscode["cookie"]
    # Not signed in: passed on untouched, for the editor to judge.
    passed = gw.upstream_headers(_route(), Headers({"authorization": "token t"}), False)
    assert passed["authorization"] == "token t"


def test_editor_cookies_stay_on_the_notebooks_origin() -> None:
    assert downstream_cookie(b"_xsrf=1; Domain=.nb.example; Path=/") == b"_xsrf=1; Path=/"
    assert downstream_cookie(b"a=1; domain=nb.example") == b"a=1"
    assert downstream_cookie(b"a=1; Path=/; HttpOnly") == b"a=1; Path=/; HttpOnly"


def test_changes_access_log_keeps_writes_and_errors_and_drops_good_reads() -> None:
    import logging

    from api.main import QuietReads

    def line(method: str, status: int) -> logging.LogRecord:
        return logging.LogRecord(
            "ainb-test.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
            ("1.2.3.4:5", method, "/v1/projects/p/notebooks/n", "1.1", status), None,
        )  # fmt: skip

    quiet = QuietReads()
    assert not quiet.filter(line("GET", 200)) and not quiet.filter(line("HEAD", 304))
    assert quiet.filter(line("GET", 404)) and quiet.filter(line("GET", 500))
    assert quiet.filter(line("POST", 201)) and quiet.filter(line("DELETE", 409))
    logging.getLogger("ainb-test.access").setLevel(logging.DEBUG)
    try:
        debug = line("GET", 200)
        assert quiet.filter(debug) and debug.levelname == "DEBUG"
    finally:
        logging.getLogger("ainb-test.access").setLevel(logging.NOTSET)


def test_access_logs_never_hold_a_token() -> None:
    import logging

    from api.main import RedactTokens

    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
        ("1.2.3.4:5", "GET", "/lab?a=1&token=s3cr3t&b=2", "1.1", 200), None,
    )  # fmt: skip
    assert RedactTokens().filter(record)
    assert "s3cr3t" not in record.getMessage() and "token=***&b=2" in record.getMessage()
    websocket = logging.LogRecord(
        "uvicorn.error", logging.INFO, "", 0, '%s - "WebSocket %s" [accepted]',
        ("1.2.3.4:5", "/api/kernels/k/channels?session_id=s&token=s3cr3t"), None,
    )  # fmt: skip
    RedactTokens().filter(websocket)
    assert websocket.getMessage().endswith('channels?session_id=s&token=***" [accepted]')
