"""`ainb token …`, `ainb rotate-token` and `ainb audit`: their words, their output, the
requests they send (against a fake API), and what a 401 tells the user."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from api.routers.tokens import IssuedToken, TokenView
from cli import render
from cli.main import build_parser
from cli.spec import default_token_name, parse_selector
from ledger.access_store import AuditEntry
from tests.unit.test_cli_commands import BASE, FakeApi, run
from tests.unit.test_cli_render import NOTEBOOK_ID, notebook

TOKENS = "/v1/projects/demo/tokens"
TOKEN_ID = "0123abcd4567"
SECRET = f"ainb_{TOKEN_ID}_{'s' * 43}"
CREATED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


# Token views as the API serializes them, made from its own models so they stay real.
def token_view(**changes) -> dict:
    fields = {
        "id": TOKEN_ID,
        "name": "ci",
        "project": "demo",
        "role": "read",
        "label_selector": {"team": "nlp"},
        "created_by": "administrator (admin-abcdef012345)",
        "created_at": CREATED,
        "expires_at": CREATED + timedelta(days=30),
        "last_used_at": None,
        "revoked_at": None,
        "state": "active",
        **changes,
    }
    return TokenView(**fields).model_dump(mode="json")


def issued(**changes) -> dict:
    return IssuedToken(**token_view(**changes), token=SECRET).model_dump(mode="json")


def audit_entry(**changes) -> dict:
    fields = {
        "at": CREATED,
        "project": "demo",
        "notebook_id": NOTEBOOK_ID,
        "action": "create",
        "token_id": TOKEN_ID,
        "token_name": "ci",
        "status": 403,
        "detail": "a read token may not create: it needs role operator",
        **changes,
    }
    return AuditEntry(**fields).model_dump(mode="json")


# ------------------------------------------------------------------ parsing


def test_token_create_arguments() -> None:
    args = build_parser().parse_args(
        ["token", "create", "--role", "operator", "--label-selector", "team=nlp, env=dev",
         "--label-selector", "tier=gold", "--expires", "30d", "--name", "ci bot", "-o", "json"]
    )  # fmt: skip
    assert (args.command, args.token_command, args.role) == ("token", "create", "operator")
    assert args.label_selector == [{"team": "nlp", "env": "dev"}, {"tier": "gold"}]
    assert (args.expires, args.name, args.output) == (30 * 86400, "ci bot", "json")
    args = build_parser().parse_args(["token", "create", "--role", "read"])
    assert (args.label_selector, args.expires, args.name) == ([], None, None)
    assert build_parser().parse_args(["token", "renew", TOKEN_ID, "--expires", "12h"]).expires == (
        12 * 3600
    )
    assert build_parser().parse_args(["token", "renew", TOKEN_ID]).expires is None


def test_the_other_new_commands_parse() -> None:
    parser = build_parser()
    assert parser.parse_args(["token", "ls"]).token_command == "ls"
    assert parser.parse_args(["token", "revoke", TOKEN_ID]).id == TOKEN_ID
    assert parser.parse_args(["rotate-token", NOTEBOOK_ID]).id == NOTEBOOK_ID
    args = parser.parse_args(["audit", "--from", "2026-01-01", "--to", "2026-01-02T00:00:00Z"])
    assert (args.start, args.end, args.limit) == ("2026-01-01", "2026-01-02T00:00:00Z", None)
    # the connection and output options go before `token`, between, or after the action
    for argv in (["-o", "json", "token", "ls"], ["token", "-o", "json", "ls"],
                 ["token", "ls", "-o", "json"]):  # fmt: skip
        assert parser.parse_args(argv).output == "json"


@pytest.mark.parametrize(
    "argv",
    [
        ["token", "create"],  # the role is not implied
        ["token", "create", "--role", "admin"],
        ["token", "create", "--role", "read", "--expires", "soon"],
        ["token", "create", "--role", "read", "--label-selector", "team"],
        ["token", "create", "--role", "read", "--label-selector", ","],
        ["token"],
        ["token", "revoke"],
        ["token", "renew", TOKEN_ID, "--expires", "1.5d"],
        ["rotate-token"],
        ["audit", "--limit", "many"],
    ],
)
def test_token_usage_errors_exit_2(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_selectors_and_default_names() -> None:
    assert parse_selector("team=nlp") == {"team": "nlp"}
    assert parse_selector(" team = nlp ,env=dev,") == {"team": "nlp", "env": "dev"}
    for bad in ("", "team", "=nlp", ",,"):
        with pytest.raises(ValueError, match="KEY=VALUE"):
            parse_selector(bad)
    assert default_token_name(CREATED) == "cli-20260102-030405"
    # within the API's name pattern (no ':'), whenever it is made
    TokenView.model_validate({**token_view(), "name": default_token_name()})


# ---------------------------------------------------------------- rendering


def test_token_table_columns() -> None:
    used = token_view(last_used_at=CREATED + timedelta(hours=1))
    revoked = token_view(id="fedcba987654", name="old", role="operator", label_selector={},
                         revoked_at=CREATED, state="revoked")  # fmt: skip
    lines = render.tokens_table([used, revoked], "demo").splitlines()
    assert [h.strip() for h in lines[0].split("  ") if h.strip()] == [
        "ID", "NAME", "ROLE", "SELECTOR", "STATE", "EXPIRES", "LAST USED",
    ]  # fmt: skip
    assert lines[1].split() == [
        TOKEN_ID, "ci", "read", "team=nlp", "active", "2026-02-01", "03:04:05Z", "2026-01-02",
        "04:04:05Z",
    ]  # fmt: skip
    assert lines[2].split() == [
        "fedcba987654", "old", "operator", "-", "revoked", "2026-02-01", "03:04:05Z", "never",
    ]  # fmt: skip
    assert lines[1].index("active") == lines[0].index("STATE")
    assert render.tokens_table([], "demo") == "no tokens in project demo\n"


def test_a_new_token_shows_its_secret_once_set_apart() -> None:
    text = render.issued_token(issued())
    assert text.count(SECRET) == 1
    assert f"\n    {SECRET}\n" in text  # on a line of its own
    assert "will not be shown again" in text
    assert "role:" in text and "team=nlp" in text and "2026-02-01 03:04:05Z" in text
    # a view without the secret never prints one
    assert "ainb_" not in render.token_detail(token_view())


def test_audit_table() -> None:
    entry = audit_entry(detail="line one\nline two " + "x" * 80)
    lines = render.audit_table([entry, audit_entry(notebook_id=None, status=201, detail="")],
                               "demo").splitlines()  # fmt: skip
    assert lines[0].split() == ["AT", "ACTION", "NOTEBOOK", "TOKEN", "STATUS", "DETAIL"]
    assert len(lines) == 3  # a detail with a newline stays on its entry's line
    for cell in ("2026-01-02 03:04:05Z", "create", NOTEBOOK_ID, f"ci ({TOKEN_ID})", "403",
                 "line one line two"):  # fmt: skip
        assert cell in lines[1]
    assert lines[1].endswith("...")
    assert lines[2].split()[3:] == ["-", "ci", f"({TOKEN_ID})", "201", "-"]
    assert render.audit_table([], "demo").startswith("no audit entries in project demo")


# ----------------------------------------------------------------- commands


def test_token_create_posts_the_body_and_shows_the_secret() -> None:
    api = FakeApi({("POST", TOKENS): lambda r: httpx.Response(201, json=issued())})
    code, out, err = run(
        ["token", "create", "--role", "read", "--label-selector", "team=nlp", "--expires", "30d",
         "--name", "ci"], api,
    )  # fmt: skip
    assert code == 0 and err == ""
    assert json.loads(api.requests[-1].content) == {
        "name": "ci", "role": "read", "label_selector": {"team": "nlp"},
        "expires_in_s": 30 * 86400,
    }  # fmt: skip
    assert SECRET in out and "will not be shown again" in out

    code, out, _ = run(["token", "create", "--role", "operator", "-o", "json"], api)
    body = json.loads(api.requests[-1].content)
    assert body["name"].startswith("cli-") and body["label_selector"] == {}
    assert "expires_in_s" not in body  # the API's default
    assert json.loads(out) == issued()  # the whole answer, the secret included


def test_token_ls_get_revoke_renew() -> None:
    revoked = token_view(revoked_at=CREATED + timedelta(days=1), state="revoked")
    renewed = token_view(expires_at=CREATED + timedelta(days=90))
    api = FakeApi({
        ("GET", TOKENS): [token_view()],
        ("GET", f"{TOKENS}/{TOKEN_ID}"): token_view(),
        ("DELETE", f"{TOKENS}/{TOKEN_ID}"): revoked,
        ("POST", f"{TOKENS}/{TOKEN_ID}/renew"): renewed,
    })  # fmt: skip
    code, out, _ = run(["token", "ls"], api)
    assert code == 0 and out.splitlines()[0].startswith("ID") and TOKEN_ID in out
    assert json.loads(run(["token", "ls", "-o", "json"], api)[1]) == [token_view()]
    code, out, _ = run(["token", "get", TOKEN_ID], api)
    assert code == 0 and "last used:" in out and "never" in out
    code, out, _ = run(["token", "revoke", TOKEN_ID], api)
    assert code == 0 and out == f"token {TOKEN_ID} (ci) revoked at 2026-01-03 03:04:05Z\n"
    assert api.requests[-1].method == "DELETE"
    code, out, _ = run(["token", "renew", TOKEN_ID, "--expires", "90d"], api)
    assert code == 0 and out == f"token {TOKEN_ID} (ci) renewed: expires 2026-04-02 03:04:05Z\n"
    assert json.loads(api.requests[-1].content) == {"expires_in_s": 90 * 86400}
    run(["token", "renew", TOKEN_ID], api)
    assert json.loads(api.requests[-1].content) == {"expires_in_s": None}


def test_a_refused_token_operation_is_one_line_and_exit_2() -> None:
    api = FakeApi({
        ("POST", TOKENS): httpx.Response(
            403, json={"error": "a read token cannot create a operator token", "field": "role"}),
        ("POST", f"{TOKENS}/{TOKEN_ID}/renew"): httpx.Response(
            409, json={"error": f"token {TOKEN_ID} is revoked: create a new one"}),
    })  # fmt: skip
    code, out, err = run(["token", "create", "--role", "operator"], api)
    assert code == 2 and out == "" and err.count("\n") == 1 and "403" in err
    code, _, err = run(["token", "renew", TOKEN_ID], api)
    assert code == 2 and "is revoked" in err


def test_rotate_token_prints_the_new_link() -> None:
    rotated = notebook("RUNNING")
    rotated["status"]["url"] = f"http://127.0.0.1:8000/notebooks/{NOTEBOOK_ID}/?token=new"
    rotated["status"]["token_generation"] = 1
    api = FakeApi({("POST", f"{BASE}/{NOTEBOOK_ID}/token/rotate"): rotated})
    code, out, _ = run(["rotate-token", NOTEBOOK_ID], api)
    assert code == 0 and out.splitlines()[0] == (
        f"{NOTEBOOK_ID}: new link {rotated['status']['url']}"
    )
    assert json.loads(run(["rotate-token", NOTEBOOK_ID, "-o", "json"], api)[1]) == rotated
    stopped = notebook("STOPPED")
    stopped["status"]["token_generation"] = 2
    api.routes[("POST", f"{BASE}/{NOTEBOOK_ID}/token/rotate")] = stopped
    code, out, _ = run(["rotate-token", NOTEBOOK_ID], api)
    assert code == 0 and "generation 2" in out and "ainb get" in out


def test_audit_sends_the_window_and_shows_a_table() -> None:
    api = FakeApi({("GET", "/v1/projects/demo/audit"): [audit_entry()]})
    code, out, _ = run(["audit", "--from", "2026-01-01T00:00:00Z", "--to", "2026-01-03",
                        "--limit", "5"], api)  # fmt: skip
    assert code == 0 and "a read token may not create" in out
    params = api.requests[-1].url.params
    assert (params["from"], params["to"], params["limit"]) == ("2026-01-01T00:00:00Z",
                                                               "2026-01-03", "5")  # fmt: skip
    run(["audit"], api)
    assert not api.requests[-1].url.params  # the API's window: the last 7 days
    assert json.loads(run(["audit", "-o", "json"], api)[1]) == [audit_entry()]


def test_get_shows_who_gave_the_last_command() -> None:
    nb = notebook("RUNNING")
    nb["status"]["last_command_by"] = {"token_id": TOKEN_ID, "name": "ci", "role": "operator"}
    code, out, _ = run(["get", NOTEBOOK_ID], FakeApi({("GET", f"{BASE}/{NOTEBOOK_ID}"): nb}))
    assert code == 0 and f"last command by:  ci ({TOKEN_ID}, operator)" in out


NO_TOKEN = {"error": "an API token is needed: send it as 'Authorization: Bearer <token>'"}
BAD_TOKEN = {"error": "the API token is not valid (unknown, expired or revoked)"}


def test_a_401_without_a_token_says_how_to_give_one(tmp_path) -> None:
    api = FakeApi({("GET", BASE): httpx.Response(401, json=NO_TOKEN)})
    code, out, err = run(["ls"], api, env={"HOME": str(tmp_path)})
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("ainb: error: no API token given (HTTP 401)")
    for words in ("--token", "AINB_TOKEN", str(tmp_path / ".config/ainb/config.toml"),
                  "admin-token", "scripts/up"):  # fmt: skip
        assert words in err


def test_a_401_with_a_token_names_where_it_came_from(tmp_path) -> None:
    api = FakeApi({("GET", BASE): httpx.Response(401, json=BAD_TOKEN)})
    code, _, err = run(["ls"], api, env={"HOME": "/nonexistent", "AINB_TOKEN": SECRET})
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("ainb: error: the API refused the token from AINB_TOKEN: the API")
    assert "(HTTP 401)" in err and "--token" in err and SECRET not in err
    _, _, err = run(["--token", "x", "ls"], api)
    assert "the token from --token" in err
    config = tmp_path / "config.toml"
    config.write_text('token = "from-file"\n')
    _, _, err = run(["ls"], api, env={"AINB_CLI_CONFIG": str(config)})
    assert f"the token from token in {config}" in err and "from-file" not in err
    # a token that is valid but may not do this is a 403: the API's reason, as for any 4xx
    api.routes[("POST", f"{BASE}/{NOTEBOOK_ID}/stop")] = httpx.Response(
        403, json={"error": "a read token may not stop: it needs role operator"}
    )
    code, _, err = run(["stop", NOTEBOOK_ID], api)
    assert code == 2 and err == (
        "ainb: error: a read token may not stop: it needs role operator (HTTP 403)\n"
    )
