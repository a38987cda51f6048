"""``ainb``: argument parsing and dispatch. The HTTP calls are in cli/client.py, output
in cli/render.py, settings in cli/config.py, ``--wait`` in cli/wait.py, and the token and
audit commands in cli/tokens.py.

Exit codes: 0 done, 1 failed (the notebook ended FAILED/ERROR, the server erred or could
not be reached), 2 refused (a 4xx from the API, or a usage error), 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping
from typing import TextIO

from cli import render, tokens
from cli.client import ApiError, Client, Unreachable
from cli.config import ConfigError, resolve
from cli.spec import (
    apply_label_edits,
    check_label_edit,
    notebook_body,
    parse_duration,
    parse_framework,
    parse_pair,
)
from cli.wait import WaitFailed, follow


class UsageError(Exception):
    """The command cannot be sent as given (exit 2, like the API's 4xx)."""


STATES = ("STARTING", "RUNNING", "STOPPING", "STOPPED", "FAILED", "ERROR", "DELETING")


def _arg_type(parse: Callable, name: str) -> Callable:
    """Turn a parser's ValueError into argparse's usage error (exit 2, the usage line)."""

    def convert(text: str):
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    convert.__name__ = name
    return convert


_duration = _arg_type(parse_duration, "duration")
_framework = _arg_type(parse_framework, "framework")
_label = _arg_type(lambda t: parse_pair(t, "label"), "label")
_env = _arg_type(lambda t: parse_pair(t, "environment variable"), "env")
_label_edit = _arg_type(check_label_edit, "label edit")


def _common() -> argparse.ArgumentParser:
    # SUPPRESS: an option absent here must not overwrite the same option given before the
    # command, so that `ainb --project p ls` and `ainb ls --project p` both work.
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection and output")
    group.add_argument("--url", default=argparse.SUPPRESS, help="API address (AINB_URL)")
    group.add_argument("--project", default=argparse.SUPPRESS, help="project (AINB_PROJECT)")
    group.add_argument("--token", default=argparse.SUPPRESS, help="bearer token (AINB_TOKEN)")
    group.add_argument(
        "-o", "--output", choices=render.FORMATS, default=argparse.SUPPRESS, help="output format"
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="ainb",
        parents=[common],
        description="Managed AI notebooks from the command line. Settings come from flags, "
        "then AINB_URL/AINB_PROJECT/AINB_TOKEN, then ~/.config/ainb/config.toml "
        "(or the file named by AINB_CLI_CONFIG).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=help, description=help)

    run = command("run", "create a notebook and start it")
    run.add_argument("framework", type=_framework, help="NAME or NAME:VERSION (see capabilities)")
    run.add_argument("editor", nargs="?", help="e.g. jupyterlab (default: the API's)")
    run.add_argument("--name", help="a name for people (default: FRAMEWORK-<random>)")
    run.add_argument("--flavor", help="default: the first flavor of the right kind")
    count = run.add_mutually_exclusive_group()
    count.add_argument("--gpu", type=int, metavar="N", help="GPU units of the flavor")
    count.add_argument("--cpu", type=int, metavar="N", help="CPU units of the flavor (default 1)")
    run.add_argument(
        "-v", "--volume", action="append", default=[], metavar="VOLUME",
        help="bucket@alias/prefix:/workspace/path:ro|rw|rwd:cache|no-cache (repeatable)",
    )  # fmt: skip
    run.add_argument(
        "-e", "--env", action="append", type=_env, default=[], metavar="K=V",
        help="environment variable of the editor (repeatable)",
    )  # fmt: skip
    run.add_argument(
        "-l", "--label", action="append", type=_label, default=[], metavar="K=V",
        help="label (repeatable)",
    )  # fmt: skip
    run.add_argument("--unsecure-http", action="store_true", help="no token on the editor URL")
    run.add_argument("--timeout", type=_duration, metavar="D", help="e.g. 30m, 2h, 7d or seconds")
    run.add_argument(
        "--restart-on-timeout", action="store_true", help="start again after a timeout stop"
    )
    run.add_argument("--wait", action="store_true", help="follow it until RUNNING")

    ls = command("ls", "list notebooks")
    ls.add_argument("--state", type=str.upper, choices=STATES)
    ls.add_argument(
        "-l", "--label", action="append", type=_label, default=[], metavar="K=V",
        help="only notebooks with this label (repeatable: all of them)",
    )  # fmt: skip

    get = command("get", "show one notebook")
    get.add_argument("id")

    for verb, target in (("start", "RUNNING"), ("stop", "STOPPED")):
        p = command(verb, f"{verb} a notebook")
        p.add_argument("id")
        p.add_argument("--wait", action="store_true", help=f"follow it until {target}")

    delete = command("delete", "delete a notebook (stopping it first if it runs)")
    delete.add_argument("id")
    delete.add_argument("--keep-workspace", action="store_true", help="keep its saved workspace")
    delete.add_argument("--wait", action="store_true", help="follow it until it is gone")

    logs = command("logs", "the notebook container's output")
    logs.add_argument("id")
    logs.add_argument("-f", "--follow", action="store_true", help="go on as it writes more")
    logs.add_argument("--tail", type=int, metavar="N", help="only the last N lines")

    label = command("label", "set (K=V) or remove (K-) labels")
    label.add_argument("id")
    label.add_argument("edits", nargs="+", type=_label_edit, metavar="K=V|K-")

    usage = command("usage", "billed minutes of a notebook, or of the project")
    usage.add_argument("id", nargs="?")
    usage.add_argument("--from", dest="start", help="project usage from (ISO time)")
    usage.add_argument("--to", dest="end", help="project usage to (ISO time)")

    caps = command("capabilities", "what can be asked for")
    caps.add_argument("kind", choices=("frameworks", "editors", "flavors"))

    tokens.add_commands(command, common, _arg_type)
    return parser


class Output:
    def __init__(self, fmt: str, stdout: TextIO, stderr: TextIO) -> None:
        self.fmt = fmt
        self.stdout = stdout
        self.stderr = stderr

    def write(self, text: str) -> None:
        self.stdout.write(text)

    def show(self, data: object, as_table: Callable[[], str]) -> None:
        self.write(as_table() if self.fmt == "table" else render.structured(data, self.fmt))

    def progress(self, line: str) -> None:
        # With -o json/yaml, stdout is for the one document a script parses.
        stream = self.stdout if self.fmt == "table" else self.stderr
        stream.write(line + "\n")
        stream.flush()


def _resources(client: Client, args: argparse.Namespace) -> tuple[str, str, int]:
    """(flavor, kind, units): a count names the kind; otherwise the flavor's kind, from
    the catalog, and 1 unit."""
    if args.gpu is not None:
        kind, units = "gpu", args.gpu
    elif args.cpu is not None:
        kind, units = "cpu", args.cpu
    else:
        kind, units = None, 1
    if args.flavor and kind:
        return args.flavor, kind, units
    try:
        flavors = client.capabilities("flavors")
    except ApiError:
        if not args.flavor:
            raise
        flavors = []  # the fleet is busy: a named flavor can still be asked for
    if args.flavor:
        known = {f["name"]: f["kind"] for f in flavors}
        # An unknown flavor goes as asked: the API's answer names the field and the choices.
        return args.flavor, known.get(args.flavor, "cpu"), units
    kind = kind or "cpu"
    for flavor in flavors:
        if flavor["kind"] == kind:
            return flavor["name"], kind, units
    raise UsageError(f"the API offers no {kind} flavor; see `ainb capabilities flavors`")


def _after_command(client: Client, out: Output, notebook: dict, wait: bool, target: str) -> int:
    if wait:
        notebook = follow(client, notebook, target, out.progress) or notebook
        if out.fmt == "table":
            if target == "RUNNING":
                url = notebook["status"].get("url")
                out.write(f"{notebook['id']} is RUNNING" + (f": {url}\n" if url else "\n"))
            return 0
    out.show(notebook, lambda: render.notebooks_table([notebook], client.config.project))
    return 0


def cmd_run(client: Client, args: argparse.Namespace, out: Output) -> int:
    flavor, kind, units = _resources(client, args)
    body = notebook_body(
        framework=args.framework,
        editor=args.editor,
        name=args.name,
        flavor=flavor,
        kind=kind,
        units=units,
        volumes=args.volume,
        env=dict(args.env),
        labels=dict(args.label),
        unsecure_http=args.unsecure_http,
        timeout=args.timeout,
        restart_on_timeout=args.restart_on_timeout,
    )
    notebook = client.create(body)
    if args.wait:
        # The id first: if the wait ends badly, it is what the next command needs.
        out.progress(f"notebook {notebook['id']} ({notebook['spec']['name']}) created")
    return _after_command(client, out, notebook, args.wait, "RUNNING")


def cmd_ls(client: Client, args: argparse.Namespace, out: Output) -> int:
    labels = [f"{k}={v}" for k, v in args.label]
    notebooks = client.list(args.state, labels)
    out.show(notebooks, lambda: render.notebooks_table(notebooks, client.config.project))
    return 0


def cmd_get(client: Client, args: argparse.Namespace, out: Output) -> int:
    notebook = client.get(args.id)
    out.show(notebook, lambda: render.notebook_detail(notebook))
    return 0


def cmd_start(client: Client, args: argparse.Namespace, out: Output) -> int:
    return _after_command(client, out, client.command(args.id, "start"), args.wait, "RUNNING")


def cmd_stop(client: Client, args: argparse.Namespace, out: Output) -> int:
    return _after_command(client, out, client.command(args.id, "stop"), args.wait, "STOPPED")


def cmd_delete(client: Client, args: argparse.Namespace, out: Output) -> int:
    notebook = client.delete(args.id, args.keep_workspace)
    if args.wait:
        follow(client, notebook, "DELETED", out.progress)
        if out.fmt == "table":
            return 0
    out.show(notebook, lambda: render.notebooks_table([notebook], client.config.project))
    return 0


def cmd_label(client: Client, args: argparse.Namespace, out: Output) -> int:
    # PUT replaces the whole map: read, edit, write (a concurrent edit in between is lost).
    current = client.get(args.id)["spec"].get("labels", {})
    notebook = client.set_labels(args.id, apply_label_edits(current, args.edits))
    out.show(
        notebook,
        lambda: f"{notebook['id']} labels: {render.labels_text(notebook['spec']['labels'])}\n",
    )
    return 0


def cmd_logs(client: Client, args: argparse.Namespace, out: Output) -> int:
    if args.tail is not None and args.tail < 0:
        raise UsageError("--tail: a number of lines, 0 or more")
    stream = getattr(out.stdout, "buffer", None)
    for chunk in client.logs(args.id, args.follow, args.tail):
        if stream is not None:
            stream.write(chunk)
            stream.flush()
        else:
            out.stdout.write(chunk.decode(errors="replace"))
            out.stdout.flush()
    return 0


def cmd_usage(client: Client, args: argparse.Namespace, out: Output) -> int:
    if args.id:
        usage = client.notebook_usage(args.id)
        out.show(usage, lambda: render.notebook_usage(usage))
    else:
        usage = client.project_usage(args.start, args.end)
        out.show(usage, lambda: render.project_usage(usage))
    return 0


def cmd_capabilities(client: Client, args: argparse.Namespace, out: Output) -> int:
    items = client.capabilities(args.kind)
    tables = {
        "frameworks": render.frameworks_table,
        "editors": render.editors_table,
        "flavors": render.flavors_table,
    }
    out.show(items, lambda: tables[args.kind](items))
    return 0


COMMANDS = {
    "run": cmd_run,
    "ls": cmd_ls,
    "get": cmd_get,
    "start": cmd_start,
    "stop": cmd_stop,
    "delete": cmd_delete,
    "label": cmd_label,
    "usage": cmd_usage,
    "capabilities": cmd_capabilities,
    "logs": cmd_logs,
    **tokens.COMMANDS,
}


def main(
    argv: list[str] | None = None,
    environ: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    transport=None,
) -> int:
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    args = build_parser().parse_args(argv)
    out = Output(getattr(args, "output", "table"), stdout, stderr)

    def fail(message: str, code: int) -> int:
        stderr.write(f"ainb: {message}\n")
        return code

    env: Mapping[str, str] = os.environ if environ is None else environ
    flags = {k: getattr(args, k, None) for k in ("url", "project", "token")}
    try:
        config = resolve(flags, env)
    except ConfigError as err:
        return fail(str(err), 2)
    with Client(config, transport=transport) as client:
        try:
            return COMMANDS[args.command](client, args, out)
        except ApiError as err:
            if err.status == 401:
                return fail(f"error: {tokens.unauthorized(err, flags, env, config.token)}", 2)
            return fail(f"error: {err.line()}", 2 if err.client_error else 1)
        except Unreachable as err:
            return fail(str(err), 1)
        except WaitFailed as err:
            return fail(str(err), 1)
        except UsageError as err:
            return fail(str(err), 2)
        except KeyboardInterrupt:
            return fail("interrupted (the notebook carries on; `ainb get` shows it)", 130)


if __name__ == "__main__":
    sys.exit(main())
