"""The gateway's rules without a network: who is let in, what the editor is sent, where
redirects point."""

from __future__ import annotations

import pytest
from pydantic import SecretStr
from starlette.datastructures import Headers, QueryParams

from api.gateway import COOKIE_PREFIX, Gateway, Refused, Route
from domain.config import Settings
from domain.gateway import gateway_prefix, home_path, notebook_url, ready_path
from domain.spec import Editor
from domain.states import NotebookState
from domain.tokens import editor_token

SECRET = "s3cret"
NID = "a" * 32


class FakeService:
    def editor_token(self, notebook_id: str) -> str:
        return editor_token(SECRET, notebook_id)


def _gateway() -> Gateway:
    settings = Settings(
        token_secret=SecretStr(SECRET),
        public_url="https://nb.example",
        api_tokens={"p": [SecretStr("api-tok")]},
    )
    return Gateway(FakeService(), settings)  # type: ignore[arg-type]


def _route(editor: Editor = Editor.JUPYTERLAB, unsecure: bool = False) -> Route:
    return Route("p", NID, editor, unsecure, NotebookState.RUNNING, "http://127.0.0.1:18800")


def test_paths_and_url_per_editor() -> None:
    assert gateway_prefix("p", NID) == f"/notebooks/p/{NID}/"
    # JupyterLab serves under the prefix itself; code-server at its root.
    assert ready_path(Editor.JUPYTERLAB, "p", NID) == f"/notebooks/p/{NID}/api/status"
    assert home_path(Editor.VSCODE, "p", NID) == "/"
    assert ready_path(Editor.VSCODE, "p", NID) == "/healthz"
    assert notebook_url("http://h:1/", Editor.JUPYTERLAB, "p", NID) == (
        f"http://h:1/notebooks/p/{NID}/lab"
    )
    prefix = gateway_prefix("p", NID)
    assert _route().upstream_path(prefix + "api/contents/a%2Fb") == prefix + "api/contents/a%2Fb"
    assert _route(Editor.VSCODE).upstream_path(prefix + "static/x.js") == "/static/x.js"


@pytest.mark.parametrize(
    ("query", "headers", "cookies", "expected"),
    [
        ({"token": editor_token(SECRET, NID)}, {}, {}, (True, True)),
        ({}, {"authorization": f"token {editor_token(SECRET, NID)}"}, {}, (True, True)),
        ({}, {"authorization": "Bearer api-tok"}, {}, (True, True)),
        ({}, {}, {COOKIE_PREFIX + NID: editor_token(SECRET, NID)}, (True, False)),
        ({}, {}, {COOKIE_PREFIX + NID: "stale"}, (False, False)),  # the editor's login then
        ({}, {}, {}, (False, False)),
    ],
)
def test_who_is_let_in(query, headers, cookies, expected) -> None:
    gw = _gateway()
    assert gw.authorize(_route(), QueryParams(query), Headers(headers), cookies) == expected


@pytest.mark.parametrize(
    "credentials",
    [{"token": "wrong"}, {"token": editor_token(SECRET, "b" * 32)}, {"token": "api-tok-other"}],
)
def test_a_wrong_explicit_token_is_refused(credentials) -> None:
    with pytest.raises(Refused) as err:
        _gateway().authorize(_route(), QueryParams(credentials), Headers({}), {})
    assert err.value.status == 401


def test_an_api_token_only_opens_its_own_project() -> None:
    other = Route("q", NID, Editor.JUPYTERLAB, False, NotebookState.RUNNING, "http://x:1")
    with pytest.raises(Refused):
        _gateway().authorize(
            other, QueryParams({}), Headers({"authorization": "Bearer api-tok"}), {}
        )


def test_the_editor_gets_its_own_credentials_not_the_api_token() -> None:
    gw = _gateway()
    incoming = Headers(
        {
            "host": "nb.example",
            "authorization": "Bearer api-tok",
            "origin": "https://nb.example",
            "cookie": f"{COOKIE_PREFIX}{NID}=x; _xsrf=abc",
            "connection": "keep-alive",
        }
    )
    up = "http://127.0.0.1:18800"
    out = gw.upstream_headers(_route(), up, incoming, authorized=True)
    assert out["authorization"] == f"token {editor_token(SECRET, NID)}"
    assert out["origin"] == up  # the editor's own origin check passes
    assert out["cookie"] == "_xsrf=abc"  # the gateway's cookie stays with the gateway
    assert "connection" not in out and "host" not in out
    vscode = gw.upstream_headers(_route(Editor.VSCODE), up, incoming, authorized=True)
    assert "authorization" not in vscode and "code-server-session=$argon2" in vscode["cookie"]
    # Not signed in: passed on untouched, for the editor to judge.
    passed = gw.upstream_headers(_route(), up, Headers({"authorization": "token t"}), False)
    assert passed["authorization"] == "token t"
    # A foreign origin is not rewritten: the editor refuses it.
    foreign = gw.upstream_headers(_route(), up, Headers({"origin": "https://evil.example"}), True)
    assert foreign["origin"] == "https://evil.example"


def test_redirects_point_at_the_gateway() -> None:
    gw = _gateway()
    up = "http://127.0.0.1:18800"
    prefix = gateway_prefix("p", NID)
    assert gw.downstream_location(_route(Editor.VSCODE), up, "./login") == "./login"
    assert gw.downstream_location(_route(Editor.VSCODE), up, "/login") == prefix + "login"
    assert gw.downstream_location(_route(), up, up + prefix + "lab") == prefix + "lab"
