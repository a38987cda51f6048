"""``ainb token …`` (the project's API tokens), ``ainb rotate-token`` (a notebook's link
token) and ``ainb audit``; and what to tell someone whose token the API does not take.

A token's secret is shown once, by ``token create``: the API keeps only its hash.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping

from cli import render
from cli.client import ApiError, Client
from cli.config import config_path
from cli.spec import default_token_name, parse_duration, parse_selector

ArgType = Callable[[Callable, str], Callable]
Command = Callable[[str, str], argparse.ArgumentParser]


def add_commands(command: Command, common: argparse.ArgumentParser, arg_type: ArgType) -> None:
    """The parsers of `token …`, `rotate-token` and `audit` (`command` makes a top-level
    one; `common` is the parent of every parser, for the connection and output options)."""
    duration = arg_type(parse_duration, "duration")
    selector = arg_type(parse_selector, "label selector")

    token = command("token", "the project's API tokens: create, ls, get, revoke, renew")
    sub = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")

    def action(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=help, description=help)

    create = action("create", "a new token (its secret is shown this once)")
    create.add_argument(
        "--role", required=True, choices=("read", "operator"),
        help="read: look (ls, get, logs, usage, audit); operator: also change",
    )  # fmt: skip
    create.add_argument(
        "--label-selector", action="append", type=selector, default=[], metavar="K=V,...",
        help="only notebooks with all these labels (default: every notebook of the project)",
    )  # fmt: skip
    create.add_argument(
        "--expires", type=duration, metavar="D", help="lifetime: 30d, 12h, 90m (default: the API's)"
    )
    create.add_argument("--name", help="a name for people and the audit log (default: cli-<time>)")

    action("ls", "list the project's tokens (never their secrets)")
    for verb, help in (("get", "show one token"), ("revoke", "revoke a token (at once)")):
        action(verb, help).add_argument("id", help="the token's id (see `ainb token ls`)")
    renew = action("renew", "a new expiry from now; same id, secret and rights")
    renew.add_argument("id", help="the token's id (see `ainb token ls`)")
    renew.add_argument(
        "--expires", type=duration, metavar="D", help="e.g. 30d (default: the API's)"
    )

    rotate = command(
        "rotate-token",
        "a notebook's new link token (a new status.url): its old links, and editor "
        "sessions opened with them, stop working",
    )
    rotate.add_argument("id", metavar="NOTEBOOK_ID")

    audit = command("audit", "the project's audit log: who changed what, refusals included")
    audit.add_argument("--from", dest="start", metavar="ISO", help="from (default: 7 days ago)")
    audit.add_argument("--to", dest="end", metavar="ISO", help="to (default: now)")
    audit.add_argument(
        "--limit", type=int, metavar="N", help="at most N entries (API default 1000)"
    )


def _create(client: Client, args: argparse.Namespace, out) -> int:
    selector: dict[str, str] = {}
    for part in args.label_selector:
        selector.update(part)
    body: dict = {
        "name": args.name or default_token_name(),
        "role": args.role,
        "label_selector": selector,
    }
    if args.expires is not None:
        body["expires_in_s"] = args.expires
    issued = client.create_token(body)
    out.show(issued, lambda: render.issued_token(issued))
    return 0


def _ls(client: Client, args: argparse.Namespace, out) -> int:
    tokens = client.list_tokens()
    out.show(tokens, lambda: render.tokens_table(tokens, client.config.project))
    return 0


def _get(client: Client, args: argparse.Namespace, out) -> int:
    token = client.get_token(args.id)
    out.show(token, lambda: render.token_detail(token))
    return 0


def _revoke(client: Client, args: argparse.Namespace, out) -> int:
    token = client.revoke_token(args.id)
    at = render.timestamp(token.get("revoked_at"))
    out.show(token, lambda: f"token {token['id']} ({token['name']}) revoked at {at}\n")
    return 0


def _renew(client: Client, args: argparse.Namespace, out) -> int:
    token = client.renew_token(args.id, args.expires)
    until = render.timestamp(token.get("expires_at"))
    out.show(token, lambda: f"token {token['id']} ({token['name']}) renewed: expires {until}\n")
    return 0


TOKEN_ACTIONS = {"create": _create, "ls": _ls, "get": _get, "revoke": _revoke, "renew": _renew}


def cmd_token(client: Client, args: argparse.Namespace, out) -> int:
    return TOKEN_ACTIONS[args.token_command](client, args, out)


def cmd_rotate_token(client: Client, args: argparse.Namespace, out) -> int:
    notebook = client.rotate_token(args.id)
    status = notebook["status"]

    def text() -> str:
        if status.get("url"):
            return f"{notebook['id']}: new link {status['url']}\n(the old link no longer works)\n"
        return (
            f"{notebook['id']}: new link token (generation {status.get('token_generation')}); "
            "its url shows in `ainb get` while it runs\n"
        )

    out.show(notebook, text)
    return 0


def cmd_audit(client: Client, args: argparse.Namespace, out) -> int:
    entries = client.audit(args.start, args.end, args.limit)
    out.show(entries, lambda: render.audit_table(entries, client.config.project))
    return 0


COMMANDS = {"token": cmd_token, "rotate-token": cmd_rotate_token, "audit": cmd_audit}


def unauthorized(
    err: ApiError, flags: Mapping[str, str | None], environ: Mapping[str, str], token: str | None
) -> str:
    """A 401's one line: the API's reason, and how to give a token."""
    path = config_path(environ)
    if not token:
        return (
            f"no API token given (HTTP {err.status}): pass --token, set AINB_TOKEN, or put "
            f'token = "..." in {path} (the embedded stack\'s administrator token is in '
            "<data dir>/admin-token; scripts/up writes it into that file)"
        )
    source = (
        "--token"
        if flags.get("token")
        else "AINB_TOKEN"
        if environ.get("AINB_TOKEN")
        else f"token in {path}"
    )
    return (
        f"the API refused the token from {source}: {err.line()}; give a valid one with "
        f'--token, AINB_TOKEN or token = "..." in {path} (the embedded stack\'s '
        "administrator token is in <data dir>/admin-token)"
    )
