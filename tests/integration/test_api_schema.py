"""Schemathesis over the whole REST API, as a project operator: no answer is a 5xx, and
every answer (status code, content type, headers, body) is one the OpenAPI document
lists. The stack's hosts are simulated (runtime "sim"), so fuzzed creates start no
container and the test needs no Docker."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import eventually
from worker.stack import Ports, Stack

# Test cases per operation and phase: ~25 s of fuzzing, ~45 s with the stack, on two cores.
MAX_EXAMPLES = 25
NOTEBOOKS = "/v1/projects/{project}/notebooks"
NOTEBOOK = NOTEBOOKS + "/{notebook_id}"
TOKENS = "/v1/projects/{project}/tokens"


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    s = Stack(
        tmp_path_factory.mktemp("api-schema"),
        Ports.random(),
        runtime="sim",
        # The operator's timeout range as wide as the document's (NotebookSpec.timeout,
        # PatchRequest.timeout: 60 s to 30 days), so a timeout the document allows is one
        # the API accepts.
        config_overrides={"timeout_min_s": 60},
    )
    try:
        s.start()
        yield s
    finally:
        s.stop()


def _created(r: httpx.Response) -> dict:
    assert r.status_code == 201, r.text
    return r.json()


def _running(api: httpx.Client, base: str, notebook_id: str, timeout: float = 30) -> None:
    def running() -> bool:
        state = api.get(f"{base}/{notebook_id}").json()["status"]["state"]
        assert state == "RUNNING", f"notebook {notebook_id} is {state}"
        return True

    eventually(running, timeout=timeout, interval=0.2, what=f"{notebook_id} to be RUNNING")


# positive_data_acceptance wants a 2xx for every input the document allows; these
# operations refuse some of them with a documented 422 for what no static schema can say.
NO_POSITIVE = [
    # the operator's catalog: flavors, frameworks, editors, storage aliases and limits
    f"POST {NOTEBOOKS}",
    # the volumes the notebook mounts
    f"POST {NOTEBOOK}/datasync",
    # expires_in_s: at most the operator's token_max_expiry_s
    f"POST {TOKENS}",
    f"POST {TOKENS}/{{token_id}}/renew",
    # from before to: one parameter against the other
    "GET /v1/projects/{project}/usage",
    "GET /v1/projects/{project}/audit",
]


def _config(project: str, token: str, notebook: str, doomed: str, victim: str) -> str:
    """schemathesis.toml. Paths name the project, its notebook (another one for DELETE, so
    the rest keep reaching a live notebook) and a token other than the fuzzer's own: always,
    not as a dictionary's likely value, or the stateful phase takes ids from earlier answers
    (the token list) and revokes or shortens the fuzzer's own token."""
    q = json.dumps
    dictionaries = {
        # What a create needs to get past the catalog now and then (else every one is a
        # 422 for an unknown flavor or framework), so fuzzed specs reach the workflow.
        "flavor": ["ai1-1-cpu", "ai1-1-gpu"],
        "framework": ["python", "pytorch"],
        "alias": ["local"],
    }
    lines = [
        f"headers = {{ Authorization = {q('Bearer ' + token)} }}",
        "[generation]",
        f"max-examples = {MAX_EXAMPLES}",
        'database = "none"',
        "[cache]",
        "enabled = false",
    ]
    for name, values in dictionaries.items():
        lines += [f"[dictionaries.{name}]", f"values = {q(values)}"]
    lines += [
        "[parameters]",
        f'"path.project" = {q(project)}',
        f'"path.notebook_id" = {q(notebook)}',
        f'"path.token_id" = {q(victim)}',
        '"body.resources.flavor" = { dictionary = "flavor", probability = 0.7 }',
        '"body.framework.id" = { dictionary = "framework", probability = 0.7 }',
        '"body.volumes[*].alias" = { dictionary = "alias", probability = 0.7 }',
        # DELETE then GET answers the notebook (DELETING) or the token (revoked), as the
        # document says, not a 404: the token list shows revoked tokens, and a notebook
        # is gone only once its workspace is saved.
        "[checks.use_after_free]",
        "enabled = false",
        "[[operations]]",
        f"include-name = {q('DELETE ' + NOTEBOOK)}",
        f'parameters = {{ "path.notebook_id" = {q(doomed)} }}',
        # A followed log goes on while the container runs: there is no answer to wait for.
        "[[operations]]",
        f"include-name = {q('GET ' + NOTEBOOK + '/logs')}",
        'parameters = { "query.follow" = "false" }',
        # Long polls and event streams answer at once when told to wait no time.
        "[[operations]]",
        f"include-name = {q('GET ' + NOTEBOOK)}",
        'parameters = { "query.timeout_s" = 0 }',
        "[[operations]]",
        f"include-name = {q('GET ' + NOTEBOOK + '/events')}",
        'parameters = { "query.timeout_s" = 0 }',
    ]
    for name in NO_POSITIVE:
        lines += [
            "[[operations]]",
            f"include-name = {q(name)}",
            "checks.positive_data_acceptance.enabled = false",
        ]
    return "\n".join(lines) + "\n"


def test_api_matches_its_schema(stack: Stack, tmp_path: Path) -> None:
    project = f"fz-{uuid.uuid4().hex[:8]}"
    base = f"/v1/projects/{project}/notebooks"
    with stack.api_client(timeout=30) as admin:
        token = _created(
            admin.post(f"/v1/projects/{project}/tokens", json={"name": "fuzz", "role": "operator"})
        )["token"]
        victim = _created(
            admin.post(f"/v1/projects/{project}/tokens", json={"name": "victim", "role": "read"})
        )["id"]
        spec = {"framework": {"id": "python"}, "resources": {"flavor": "ai1-1-cpu", "cpu": 1}}
        notebook, doomed = (
            _created(admin.post(base, json={"name": name, **spec}))["id"]
            for name in ("nb", "doomed")
        )
        _running(admin, base, notebook)
    config = tmp_path / "schemathesis.toml"
    config.write_text(_config(project, token, notebook, doomed, victim))
    argv = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        f"{stack.api_url}/openapi.json",
        # Every check runs (the default) but those the configuration turns off: `--checks
        # all` here would turn them on again.
        "--request-timeout",
        "20",
        "--no-color",
    ]
    started = time.monotonic()
    run = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    took = time.monotonic() - started
    output = run.stdout + run.stderr
    (tmp_path / "schemathesis.log").write_text(output)
    assert run.returncode == 0, f"schemathesis failed after {took:.0f} s:\n{output[-20000:]}"
    # Every operation of the document was fuzzed (none filtered out or skipped).
    selected = re.search(r"Selected: (\d+)/(\d+)", output)
    tested = re.search(r"Tested: (\d+)", output)
    assert selected and tested, output[-4000:]
    assert selected[1] == selected[2] == tested[1], output[-4000:]
    # The fuzzer's token still works: its answers were not all 401s after some point.
    with httpx.Client(base_url=stack.api_url, timeout=30) as api:
        r = api.get(base, headers={"authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
