"""The installed `ainb` command against the running stack: one notebook taken through
run --wait, ls, get, rotate-token, label, usage, stop --wait and delete; the catalog; API
tokens (create, use, ls, revoke, renew) and the audit log; the errors."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timedelta

import pytest

from tests.integration.conftest import Notebooks, ainb
from tests.support import eventually
from worker.stack import Stack, free_port

pytestmark = pytest.mark.docker


def _ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    return r.stdout


def test_capabilities(cli) -> None:
    frameworks = json.loads(_ok(cli("capabilities", "frameworks", "-o", "json")))
    python = next(f for f in frameworks if f["id"] == "python")
    assert python["default_version"] == "3.11"
    assert python["versions"][0]["editors"] == ["jupyterlab", "vscode"]
    assert {f["id"] for f in frameworks} == {"python", "pytorch", "broken"}
    table = _ok(cli("capabilities", "frameworks"))
    assert "3.11 (default)" in table and "jupyterlab" in table

    editors = json.loads(_ok(cli("capabilities", "editors", "-o", "json")))
    assert editors == [
        {"id": "jupyterlab", "frameworks": ["broken:1", "python:3.11", "pytorch:2.13"]},
        {"id": "vscode", "frameworks": ["python:3.11", "pytorch:2.13"]},
    ]
    assert _ok(cli("capabilities", "editors")).splitlines()[0].split() == ["EDITOR", "FRAMEWORKS"]

    flavors = _ok(cli("capabilities", "flavors"))
    assert "ai1-1-cpu" in flavors and "ai1-1-gpu" in flavors


def test_settings_from_environment_and_config_file(stack: Stack, project: str, cli_env, tmp_path):
    env = {**cli_env, "AINB_URL": stack.api_url, "AINB_TOKEN": stack.admin_token}
    r = ainb("capabilities", "flavors", "-o", "json", env=env)
    assert "ai1-1-cpu" in {f["name"] for f in json.loads(_ok(r))}
    config = tmp_path / "ainb.toml"
    config.write_text(
        f'url = "{stack.api_url}"\nproject = "{project}"\ntoken = "{stack.admin_token}"\n'
    )
    r = ainb("ls", "-o", "json", env={**cli_env, "AINB_CLI_CONFIG": str(config)})
    assert isinstance(json.loads(_ok(r)), list)


def test_no_token_is_one_line_saying_how_to_give_one(stack: Stack, project: str, cli_env):
    r = ainb("--url", stack.api_url, "--project", project, "ls", env=cli_env)
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1, r
    assert r.stderr.startswith("ainb: error: no API token given (HTTP 401)")
    assert "--token" in r.stderr and "AINB_TOKEN" in r.stderr and "admin-token" in r.stderr


def test_a_notebook_through_its_life(cli, notebooks: Notebooks) -> None:
    r = cli("run", "python", "jupyterlab", "--name", "cli-nb", "--flavor", "ai1-1-cpu",
            "--cpu", "1", "-l", "team=cli", "-l", "tier=gold", "-e", "GREETING=hi",
            "--timeout", "2h", "--wait")  # fmt: skip
    out = _ok(r)
    lines = out.splitlines()
    assert lines[0].startswith("notebook ") and "(cli-nb) created" in lines[0]
    notebook_id = lines[0].split()[1]
    # progress: one line per change, STARTING first and RUNNING last, then the URL
    progress = [line.split(None, 1)[1] for line in lines[1:-1]]
    assert progress[0].startswith("STARTING") and progress[-1].startswith("RUNNING"), out
    assert len(progress) == len(set(progress)), out  # nothing repeated
    assert lines[-1].startswith(f"{notebook_id} is RUNNING: http") and "token=" in lines[-1]

    nb = json.loads(_ok(cli("get", notebook_id, "-o", "json")))
    assert nb["status"]["state"] == "RUNNING"
    assert nb["spec"]["timeout"] == 7200 and nb["spec"]["env_vars"] == {"GREETING": "hi"}
    detail = _ok(cli("get", notebook_id))
    assert "RUNNING" in detail and "team=cli,tier=gold" in detail and "hi" not in detail.split()
    assert "last command by:  administrator (admin-" in detail, detail

    old_url = nb["status"]["url"]
    out = _ok(cli("rotate-token", notebook_id))
    assert out.startswith(f"{notebook_id}: new link http") and "token=" in out, out
    new_url = out.splitlines()[0].split("new link ", 1)[1]
    assert new_url != old_url
    assert json.loads(_ok(cli("get", notebook_id, "-o", "json")))["status"]["url"] == new_url

    def listed(*args: str) -> set[str]:
        return {n["id"] for n in json.loads(_ok(cli("ls", *args, "-o", "json")))}

    # Label filters come from Temporal's visibility store, which trails changes briefly;
    # a failing `ainb ls` fails at once (retry_on=()).
    eventually(
        lambda: listed("-l", "team=cli") == {notebook_id},
        timeout=15,
        interval=0.3,
        retry_on=(),
        what="the team=cli filter to list the notebook",
    )
    assert notebook_id in listed("--state", "running", "-l", "tier=gold")
    assert notebook_id not in listed("--state", "STOPPED")
    assert notebook_id in _ok(cli("ls", "-l", "team=cli"))

    out = _ok(cli("label", notebook_id, "tier-", "owner=me"))
    assert out == f"{notebook_id} labels: owner=me,team=cli\n"
    assert notebooks.get(notebook_id).json()["spec"]["labels"] == {"owner": "me", "team": "cli"}
    eventually(
        lambda: notebook_id not in listed("-l", "tier=gold"),
        timeout=15,
        interval=0.3,
        retry_on=(),
        what="the tier=gold filter to drop the notebook",
    )
    r = cli("label", notebook_id, "bad key=x")
    assert r.returncode == 2 and "labels" in r.stderr and r.stderr.count("\n") == 1

    usage = _ok(cli("usage", notebook_id))
    assert "running" in usage and "total billed minutes:" in usage
    assert "total billed minutes:" in _ok(cli("usage"))

    out = _ok(cli("stop", notebook_id, "--wait"))
    # (a workspace checkpoint under way may add "sync push workspace ..." lines)
    states = [line.split()[1] for line in out.splitlines() if line.split()[1] != "sync"]
    assert states[0] == "STOPPING" and states[-1] == "STOPPED", out
    r = cli("stop", notebook_id)  # already stopped: the API's 409, one line, exit 2
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "409" in r.stderr, r.stderr

    out = _ok(cli("delete", notebook_id, "--wait"))
    assert out.splitlines()[-1].endswith("DELETED")
    r = cli("get", notebook_id)
    assert r.returncode == 2 and "not found" in r.stderr


def test_an_unknown_framework_is_one_line_naming_the_field(cli) -> None:
    r = cli("run", "cobol", "jupyterlab")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "framework.id" in r.stderr and "cobol" in r.stderr


def test_wait_exits_non_zero_when_the_notebook_fails(cli, notebooks: Notebooks) -> None:
    r = cli("run", "python", "jupyterlab", "-v", "no-such-bucket-here@local:/workspace/d:ro",
            "--wait")  # fmt: skip
    assert r.returncode == 1, r
    assert "is FAILED: DATA_SYNC_FAILED" in r.stderr and "no-such-bucket-here" in r.stderr
    notebook_id = r.stdout.splitlines()[0].split()[1]
    notebooks.delete(notebook_id)
    notebooks.wait(notebook_id, "DELETED")


def test_an_unreachable_api_is_one_line_naming_the_url(cli_env) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    r = ainb("--url", url, "ls", env=cli_env, timeout=30)
    assert r.returncode == 1
    assert r.stderr == f"ainb: cannot reach the ainb API at {url}: connection refused\n"


def test_tokens_from_the_cli(stack: Stack, project: str, cli, cli_env) -> None:
    issued = json.loads(_ok(cli("token", "create", "--role", "read", "--name", "it-reader",
                                "-o", "json")))  # fmt: skip
    token_id, secret = issued["id"], issued["token"]
    assert issued["role"] == "read" and issued["state"] == "active" and secret.startswith("ainb_")
    reader = {**cli_env, "AINB_TOKEN": secret}

    def as_reader(*args: str) -> subprocess.CompletedProcess[str]:
        return ainb("--url", stack.api_url, "--project", project, *args, env=reader)

    assert isinstance(json.loads(_ok(as_reader("ls", "-o", "json"))), list)
    r = as_reader("run", "python", "jupyterlab", "--name", "not-for-readers")
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1, r
    assert "read token" in r.stderr and "operator" in r.stderr and "403" in r.stderr, r.stderr
    # the refusal is in the audit log, naming the token (never its secret)
    entries = json.loads(_ok(cli("audit", "-o", "json")))
    refused = [e for e in entries if e["token_id"] == token_id]
    assert refused and refused[-1]["action"] == "create" and refused[-1]["status"] == 403
    assert secret not in _ok(cli("audit"))

    listed = {t["id"]: t for t in json.loads(_ok(cli("token", "ls", "-o", "json")))}
    assert listed[token_id]["name"] == "it-reader" and listed[token_id]["state"] == "active"
    assert "token" not in listed[token_id]
    table = _ok(cli("token", "ls"))
    assert table.splitlines()[0].split()[:3] == ["ID", "NAME", "ROLE"]
    assert token_id in table and secret not in table

    out = _ok(cli("token", "revoke", token_id))
    assert out.startswith(f"token {token_id} (it-reader) revoked at "), out
    r = as_reader("ls")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r
    assert "refused the token from AINB_TOKEN" in r.stderr and "401" in r.stderr, r.stderr
    listed = {t["id"]: t for t in json.loads(_ok(cli("token", "ls", "-o", "json")))}
    assert listed[token_id]["state"] == "revoked"
    r = cli("token", "renew", token_id)  # a revoked token stays revoked
    assert r.returncode == 2 and "revoked" in r.stderr and "409" in r.stderr, r

    operator = json.loads(_ok(cli("token", "create", "--role", "operator", "--expires", "1h",
                                  "-o", "json")))  # fmt: skip
    assert operator["name"].startswith("cli-")
    renewed = json.loads(_ok(cli("token", "renew", operator["id"], "--expires", "30d",
                                 "-o", "json")))  # fmt: skip
    assert renewed["id"] == operator["id"] and renewed["state"] == "active"
    when = datetime.fromisoformat
    assert when(renewed["expires_at"]) - when(operator["expires_at"]) > timedelta(days=29)
    # the same secret still works after the renewal, with the operator's rights
    r = ainb("--url", stack.api_url, "--project", project, "--token", operator["token"],
             "token", "ls", env=cli_env)  # fmt: skip
    assert operator["id"] in _ok(r)
    _ok(cli("token", "revoke", operator["id"]))
