"""The CLI's words: durations, frameworks, key=value pairs, label edits, request bodies."""

from __future__ import annotations

import pytest

from cli.main import build_parser
from cli.spec import (
    apply_label_edits,
    format_duration,
    notebook_body,
    parse_duration,
    parse_framework,
    parse_pair,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("600", 600), ("30m", 1800), ("2h", 7200), ("7d", 604800), ("1h30m", 5400), ("45s", 45),
     ("1w", 604800), (" 2H ", 7200)],
)  # fmt: skip
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "5x", "1.5h", "h1", "30m2", "-5m", "1h 30m"])
def test_bad_durations_say_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match="30m, 2h, 7d"):
        parse_duration(text)


@pytest.mark.parametrize("seconds", [45, 600, 5400, 604800, 90061])
def test_format_duration_round_trips(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


def test_frameworks_and_pairs() -> None:
    assert parse_framework("python") == {"id": "python"}
    assert parse_framework("python:3.11") == {"id": "python", "version": "3.11"}
    assert parse_pair("a=b=c") == ("a", "b=c")  # values may hold '='
    assert parse_pair("a=") == ("a", "")
    for bad in ("=b", "novalue"):
        with pytest.raises(ValueError, match="KEY=VALUE"):
            parse_pair(bad)
    with pytest.raises(ValueError):
        parse_framework(":3.11")


def test_label_edits_set_and_remove_like_kubectl() -> None:
    current = {"team": "nlp", "tier": "gold"}
    assert apply_label_edits(current, ["tier-", "team=cv", "new=1"]) == {"team": "cv", "new": "1"}
    assert apply_label_edits(current, ["absent-"]) == current
    assert current == {"team": "nlp", "tier": "gold"}  # not edited in place
    with pytest.raises(ValueError, match="KEY-"):
        apply_label_edits(current, ["team"])


def test_run_arguments_become_the_api_spec() -> None:
    args = build_parser().parse_args(
        ["run", "python:3.11", "jupyterlab", "--name", "nb1", "--flavor", "ai1-1-gpu",
         "--gpu", "2", "-v", "data@local/train:/workspace/data:ro", "-v",
         "out@local:/workspace/out:rw:cache", "-e", "A=1", "-e", "B=x=y", "-l", "team=nlp",
         "--unsecure-http", "--timeout", "2h", "--restart-on-timeout", "--wait"]
    )  # fmt: skip
    body = notebook_body(
        framework=args.framework,
        editor=args.editor,
        name=args.name,
        flavor=args.flavor,
        kind="gpu",
        units=args.gpu,
        volumes=args.volume,
        env=dict(args.env),
        labels=dict(args.label),
        unsecure_http=args.unsecure_http,
        timeout=args.timeout,
        restart_on_timeout=args.restart_on_timeout,
    )
    assert body == {
        "name": "nb1",
        "framework": {"id": "python", "version": "3.11"},
        "editor": "jupyterlab",
        "resources": {"flavor": "ai1-1-gpu", "gpu": 2},
        "volumes": ["data@local/train:/workspace/data:ro", "out@local:/workspace/out:rw:cache"],
        "env_vars": {"A": "1", "B": "x=y"},
        "labels": {"team": "nlp"},
        "unsecure_http": True,
        "timeout": 7200,
        "timeout_auto_restart": True,
    }
    assert args.wait


def test_minimal_run_leaves_defaults_to_the_api() -> None:
    args = build_parser().parse_args(["run", "python"])
    body = notebook_body(
        framework=args.framework, editor=args.editor, name=args.name, flavor="ai1-1-cpu",
        kind="cpu", units=1,
    )  # fmt: skip
    assert set(body) == {"name", "framework", "resources"}
    assert body["name"].startswith("python-")
    assert body["resources"] == {"flavor": "ai1-1-cpu", "cpu": 1}


def test_global_options_go_before_or_after_the_command() -> None:
    parser = build_parser()
    before = parser.parse_args(["--project", "p1", "-o", "json", "ls"])
    after = parser.parse_args(["ls", "--project", "p1", "-o", "json"])
    for args in (before, after):
        assert (args.project, args.output) == ("p1", "json")
    assert not hasattr(parser.parse_args(["ls"]), "project")  # so config can fill it


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "python", "--gpu", "1", "--cpu", "1"],
        ["run", "python", "--timeout", "soon"],
        ["run", "python", "-e", "NOVALUE"],
        ["ls", "--state", "NAPPING"],
        ["label", "abc", "team"],
        ["capabilities", "hosts"],
        ["logs", "abc", "--tail", "some"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_state_filter_is_case_insensitive() -> None:
    assert build_parser().parse_args(["ls", "--state", "running"]).state == "RUNNING"
