"""The installed `ainb` command against the running stack: one notebook taken through
run --wait, ls, get, label, usage, stop --wait and delete; the catalog; the errors."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.integration.conftest import Notebooks, ainb
from worker.stack import Stack, free_port

pytestmark = pytest.mark.docker


def _ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    return r.stdout


def _eventually(check, timeout: float = 15) -> None:
    # Label filters come from Temporal's visibility store, which trails changes briefly.
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.3)


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
    r = ainb("capabilities", "flavors", "-o", "json", env={**cli_env, "AINB_URL": stack.api_url})
    assert "ai1-1-cpu" in {f["name"] for f in json.loads(_ok(r))}
    config = tmp_path / "ainb.toml"
    config.write_text(f'url = "{stack.api_url}"\nproject = "{project}"\n')
    r = ainb("ls", "-o", "json", env={**cli_env, "AINB_CLI_CONFIG": str(config)})
    assert isinstance(json.loads(_ok(r)), list)


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

    def listed(*args: str) -> set[str]:
        return {n["id"] for n in json.loads(_ok(cli("ls", *args, "-o", "json")))}

    _eventually(lambda: listed("-l", "team=cli") == {notebook_id})
    assert notebook_id in listed("--state", "running", "-l", "tier=gold")
    assert notebook_id not in listed("--state", "STOPPED")
    assert notebook_id in _ok(cli("ls", "-l", "team=cli"))

    out = _ok(cli("label", notebook_id, "tier-", "owner=me"))
    assert out == f"{notebook_id} labels: owner=me,team=cli\n"
    assert notebooks.get(notebook_id).json()["spec"]["labels"] == {"owner": "me", "team": "cli"}
    _eventually(lambda: notebook_id not in listed("-l", "tier=gold"))
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
