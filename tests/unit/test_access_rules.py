"""The pure rules of access: who may take which action, selectors, what a token may hand
out, the token format, and which Host and Origin a browser's request may carry."""

from __future__ import annotations

import pytest
from starlette.datastructures import Headers

from api.browser_safety import ApiGuard, api_hosts
from domain.access import (
    OPERATOR_ACTIONS,
    READ_ACTIONS,
    Action,
    Principal,
    Role,
    may_grant,
    new_admin_token,
    new_token,
    parse_selector,
    reaches,
    refusal,
    same_secret,
    selector_problem,
    split_token,
)
from domain.config import Settings

ADMIN = Principal(token_id="a", role=Role.ADMIN)
READ = Principal(token_id="r", role=Role.READ, project="p")
OPERATOR = Principal(token_id="o", role=Role.OPERATOR, project="p")
LIMITED = Principal(token_id="l", role=Role.OPERATOR, project="p", selector={"team": "v"})


@pytest.mark.parametrize("action", list(Action))
def test_every_action_by_every_role(action: Action) -> None:
    assert refusal(ADMIN, action, "p") is None and refusal(ADMIN, action, "q") is None
    may_read = action in READ_ACTIONS or action in (Action.CAPABILITIES, Action.OPEN_EDITOR)
    assert (refusal(READ, action, "p") is None) == may_read, action
    may_operate = action in READ_ACTIONS | OPERATOR_ACTIONS | {Action.CAPABILITIES}
    assert (refusal(OPERATOR, action, "p") is None) == may_operate, action
    # Another project: nothing but the capabilities.
    assert (refusal(OPERATOR, action, "q") is None) == (action is Action.CAPABILITIES)


def test_a_selector_token_neither_audits_nor_manages_tokens() -> None:
    assert refusal(LIMITED, Action.AUDIT, "p") and refusal(LIMITED, Action.MANAGE_TOKENS, "p")
    assert refusal(LIMITED, Action.STOP, "p") is None  # the notebook's labels decide


def test_selectors() -> None:
    assert reaches({}, {"any": "x"}) and reaches({"team": "v"}, {"team": "v", "env": "d"})
    assert not reaches({"team": "v"}, {"team": "w"}) and not reaches({"team": "v"}, {})
    assert selector_problem({"team": "v"}, {"team": "v"}) is None
    assert "team=v" in (selector_problem({"team": "v"}, {}) or "")
    assert parse_selector("team=v, env=dev,") == {"team": "v", "env": "dev"}
    with pytest.raises(ValueError, match="'team'"):
        parse_selector("team")


def test_a_token_hands_out_at_most_its_own_rights() -> None:
    assert may_grant(OPERATOR, Role.READ, {}) is None
    assert may_grant(OPERATOR, Role.OPERATOR, {"team": "v"}) is None
    assert may_grant(READ, Role.OPERATOR, {})  # more than it has
    assert may_grant(LIMITED, Role.READ, {})  # wider than its selector
    assert may_grant(LIMITED, Role.READ, {"team": "v", "env": "d"}) is None
    assert may_grant(ADMIN, Role.ADMIN, {})  # administrators come from the configuration


def test_token_format_and_hash() -> None:
    token_id, token, digest = new_token()
    assert split_token(token) == (token_id, token.split("_", 2)[2])
    assert same_secret(token.split("_", 2)[2], digest) and not same_secret("other", digest)
    assert digest not in token and len(token) > 50
    for bad in ("", "ainb_", "Bearer x", "ainb_0123456789ab_short", "ainb_ZZZ_" + "x" * 43):
        assert split_token(bad) is None
    assert split_token(new_admin_token()) is None  # never looked up in the store


def _guard(**settings) -> ApiGuard:
    return ApiGuard(lambda *a: None, Settings(**settings))  # type: ignore[arg-type]


def test_the_api_answers_to_its_own_names_only() -> None:
    hosts = api_hosts(Settings(public_url="http://127.0.0.1:8000"))
    assert {"127.0.0.1:8000", "localhost:8000", "[::1]:8000"} <= hosts
    assert "evil.example:8000" not in hosts and "127.0.0.1:8001" not in hosts
    public = api_hosts(Settings(public_url="https://ainb.example.com", allowed_hosts=["ainb"]))
    assert public == {"ainb.example.com", "ainb.example.com:443", "ainb"}
    guard = _guard(public_url="http://127.0.0.1:8000")
    assert guard.refusal("GET", Headers({"host": "127.0.0.1:8000"})) is None
    assert "evil.example" in (guard.refusal("GET", Headers({"host": "evil.example"})) or "")
    assert guard.refusal("GET", Headers({})) is not None


@pytest.mark.parametrize(
    ("method", "headers", "refused"),
    [
        ("POST", {"origin": "http://evil.example"}, True),
        ("DELETE", {"sec-fetch-site": "cross-site"}, True),
        ("PATCH", {"sec-fetch-site": "same-site"}, True),  # a notebook's origin, say
        ("POST", {"origin": "http://127.0.0.1:8000"}, False),  # the API's own pages
        ("POST", {"origin": "http://localhost:8000"}, False),
        ("POST", {"origin": "https://console.example"}, False),  # in cors_origins
        ("POST", {}, False),  # curl, the CLI, scripts
        ("GET", {"origin": "http://evil.example"}, False),  # CORS keeps the answer from it
    ],
)
def test_state_changes_from_other_origins_are_refused(method, headers, refused) -> None:
    guard = _guard(public_url="http://127.0.0.1:8000", cors_origins=["https://console.example"])
    answer = guard.refusal(method, Headers({"host": "127.0.0.1:8000", **headers}))
    assert (answer is not None) == refused, answer
