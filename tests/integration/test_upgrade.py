"""A running notebook survives an upgrade of the platform's code: the previous release's
workers and API run three notebooks (one RUNNING, one STOPPED, one whose stop was just
asked), then every part of the platform is replaced by today's code, which must take
each notebook on from the history the old code wrote."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from unittest import mock
from urllib.parse import parse_qs

import docker
import httpx
import pytest
from docker.models.containers import Container
from temporalio.api.enums.v1 import EventType, WorkflowTaskFailedCause
from temporalio.client import Client, WorkflowExecutionStatus

from activities.runtime.docker_runtime import MANAGED_LABEL, PROJECT_LABEL
from domain import search_attributes as sa
from domain.config import JUPYTERLAB_IMAGE, VSCODE_IMAGE
from domain.ids import workspace_prefix
from tests.integration.conftest import FAST_TIMINGS, Notebooks
from tests.integration.s3data import bucket_keys
from worker.stack import Ports, Stack

pytestmark = pytest.mark.docker

# The last released commit of main: bump it at each release, so that the test always
# upgrades from what is deployed to what is about to be.
PREVIOUS_RELEASE = "911a019"

REPO = Path(__file__).resolve().parents[2]
WORKSPACE_BUCKET = "ainb-workspaces"
# What a worker's log says when a workflow task fails: today's code did not replay the
# history the old code wrote (NondeterminismError), or raised while handling it.
TASK_FAILURE_MARKERS = ("nondetermin", "failed activation", "failing workflow task")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the SDK core colours its log lines
# Workflow task failures that are no fault of the code: an update or signal arrived while
# a task completed, or a worker without the workflow in its cache got a sticky task.
BENIGN_TASK_FAILURES = {
    WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_UNHANDLED_COMMAND,
    WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_RESET_STICKY_TASK_QUEUE,
}


@dataclass
class UpgradeStack(Stack):
    """A stack whose Python parts run from ``code``: a checkout of the previous release
    until the upgrade, this repository after it (the interpreter and packages are the
    same)."""

    code: Path = REPO

    def _spawn(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        # Stack._spawn runs every part from this repository. `python -m` imports from the
        # working directory first and the venv's editable install of ainb is asked last,
        # so the working directory (and PYTHONPATH, for what it starts) choose the code.
        log = open(self.data_dir / "logs" / f"{name}.log", "ab")
        # Both generations append to one log: a line tells where the new code begins.
        log.write(f"=== {name} from {self.code}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            argv,
            cwd=self.code,
            env={**self.env(), "PYTHONPATH": str(self.code), **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.procs[name] = proc
        return proc

    def new_code_log(self, name: str) -> str:
        text = (self.data_dir / "logs" / f"{name}.log").read_text(errors="replace")
        marker = f"=== {name} from {REPO}\n"
        assert marker in text, f"{name} never ran from {REPO}"
        return text.rsplit(marker, 1)[1]


def _release_code(code: Path) -> dict:
    """What the release's code is, asked of an interpreter set up as its parts are: the
    search attributes its Temporal server knew, and where its workflow was imported from."""
    probe = (
        "import json, domain.search_attributes as sa, workflows.notebook as nb\n"
        "print(json.dumps({'definitions': sa.DEFINITIONS, 'workflow': nb.__file__}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=code,
        env={**os.environ, "PYTHONPATH": str(code)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, f"the release's code does not import:\n{out.stderr}"
    return json.loads(out.stdout)


@pytest.fixture()
def previous_release() -> Iterator[Path]:
    """The files of PREVIOUS_RELEASE (git archive: no worktree left registered in the
    repository if the test dies)."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", PREVIOUS_RELEASE],
        capture_output=True,
        timeout=60,
    )
    if archive.returncode != 0:
        pytest.fail(
            f"release {PREVIOUS_RELEASE} is not in {REPO} (a shallow clone? git fetch "
            f"--unshallow): {archive.stderr.decode(errors='replace')}"
        )
    with tempfile.TemporaryDirectory(prefix=f"ainb-{PREVIOUS_RELEASE}-") as tmp:
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(tmp, filter="data")
        yield Path(tmp)


@pytest.fixture()
def project() -> str:
    return f"up-{uuid.uuid4().hex[:8]}"


@pytest.fixture()
def upgrade_stack(
    tmp_path_factory, docker_client: docker.DockerClient, project: str, previous_release: Path
) -> Iterator[UpgradeStack]:
    s = UpgradeStack(
        tmp_path_factory.mktemp("ainb-upgrade"),
        Ports.random(),
        runtime="docker",
        # The conftest stack's knobs: a lost host or a stuck start is seen in seconds.
        extra_env=dict(FAST_TIMINGS),
        config_overrides={
            "frameworks": {
                "python": {
                    "default_version": "3.11",
                    "versions": {
                        "3.11": {"images": {"jupyterlab": JUPYTERLAB_IMAGE, "vscode": VSCODE_IMAGE}}
                    },
                }
            }
        },
        code=previous_release,
    )
    try:
        yield s
    finally:
        s.stop()
        for c in docker_client.containers.list(
            all=True, filters={"label": [MANAGED_LABEL, f"{PROJECT_LABEL}={project}"]}
        ):
            c.remove(force=True)


def _editor(nb: dict) -> tuple[str, dict[str, str]]:
    """The notebook's origin at the gateway, and the header its link's token gives."""
    base, _, query = nb["status"]["url"].partition("?")
    return base.removesuffix("/lab"), {"Authorization": f"token {parse_qs(query)['token'][0]}"}


def _write_through_editor(nb: dict, name: str, text: str) -> None:
    root, auth = _editor(nb)
    r = httpx.put(
        f"{root}/api/contents/{name}",
        headers=auth,
        json={"type": "file", "format": "text", "content": text},
        timeout=30,
    )
    assert r.status_code in (200, 201), f"writing {name} through the editor: {r.text}"


def _read_through_editor(nb: dict, name: str) -> httpx.Response:
    root, auth = _editor(nb)
    return httpx.get(f"{root}/api/contents/{name}", headers=auth, timeout=30)


def _saved_workspace(s3, project: str, nid: str) -> dict[str, bytes]:
    """The notebook's saved workspace in S3, by path under /workspace."""
    prefix = workspace_prefix(project, nid) + "/"
    return {k.removeprefix(prefix): v for k, v in bucket_keys(s3, WORKSPACE_BUCKET, prefix).items()}


async def _workflow_problems(address: str) -> list[str]:
    """Every workflow of the namespace that failed, or whose history holds a workflow task
    that the code failed (a non-determinism shows there even if the workflow runs on)."""
    client = await Client.connect(address)
    problems = []
    bad = {
        WorkflowExecutionStatus.FAILED,
        WorkflowExecutionStatus.TERMINATED,
        WorkflowExecutionStatus.TIMED_OUT,
        WorkflowExecutionStatus.CANCELED,
    }
    async for wf in client.list_workflows():
        name = f"{wf.workflow_type} {wf.id} run {wf.run_id}"
        if wf.status in bad:
            problems.append(f"{name} is {wf.status.name}")
        history = await client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
        for event in history.events:
            if event.event_type != EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
                continue
            attrs = event.workflow_task_failed_event_attributes
            if attrs.cause not in BENIGN_TASK_FAILURES:
                cause = WorkflowTaskFailedCause.Name(attrs.cause)
                problems.append(f"{name}: workflow task failed ({cause}): {attrs.failure.message}")
    return problems


def _task_failures(stack: UpgradeStack, part: str) -> list[str]:
    """The lines of a new part's log that tell of a workflow task it failed."""
    lines = (_ANSI.sub("", line) for line in stack.new_code_log(part).splitlines())
    return [line[:800] for line in lines if any(m in line.lower() for m in TASK_FAILURE_MARKERS)]


@contextmanager
def _explained_by_task_failures(stack: UpgradeStack) -> Iterator[None]:
    """A check after the upgrade that fails says why when the new control worker could not
    take a history on: the API only answers a 500 or times out then."""
    try:
        yield
    except (AssertionError, httpx.HTTPError) as err:
        found = _task_failures(stack, "control-worker")
        if not found:
            raise
        raise AssertionError(
            f"{err}\nThe new control worker failed workflow tasks (a history written by "
            f"{PREVIOUS_RELEASE} that today's workflow does not replay?):\n" + "\n".join(found[:10])
        ) from err


def _command(notebooks: Notebooks, nid: str, verb: str) -> None:
    r = notebooks.command(nid, verb)
    assert r.status_code == 202, f"{verb} of {nid} answered {r.status_code}: {r.text}"


def test_notebooks_survive_an_upgrade_of_the_platform(
    upgrade_stack: UpgradeStack,
    previous_release: Path,
    docker_client: docker.DockerClient,
    project: str,
) -> None:
    stack = upgrade_stack
    release = _release_code(previous_release)
    assert Path(release["workflow"]).is_relative_to(previous_release), (
        f"the release's parts would import today's workflow: {release['workflow']}"
    )
    # Its Temporal server knew only its own search attributes (the dev server gets them on
    # its command line, from the code it is started by).
    with mock.patch.dict(sa.DEFINITIONS, release["definitions"], clear=True):
        stack.start()
    with stack.api_client(timeout=60) as api:
        notebooks = Notebooks(api, project, docker_client)
        ids, container, urls = _before_upgrade(notebooks)
        _upgrade(stack, notebooks, ids["stopping"])
        with _explained_by_task_failures(stack):
            _after_upgrade(stack, notebooks, ids, container, urls)

    problems = asyncio.run(_workflow_problems(stack.temporal_address))
    assert problems == [], "workflows hurt by the upgrade:\n" + "\n".join(problems)
    for part in ("control-worker", "host-agent"):
        found = _task_failures(stack, part)
        assert found == [], f"the new {part} failed workflow tasks:\n" + "\n".join(found[:10])


def _file(nid: str) -> tuple[str, str]:
    """The file written into a notebook's workspace before the upgrade: name, text."""
    return f"before-upgrade-{nid[:8]}.txt", f"written by {nid} under {PREVIOUS_RELEASE}\n"


def _before_upgrade(notebooks: Notebooks) -> tuple[dict[str, str], Container, dict[str, str]]:
    """Under the previous release: three notebooks with a file each in their workspace, one
    left RUNNING, one STOPPED, one whose stop was just asked."""
    ids = {role: notebooks.create(name=role)["id"] for role in ("running", "stopped", "stopping")}
    urls = {}
    for nid in ids.values():
        nb = notebooks.wait(nid, "RUNNING", timeout=180)
        _write_through_editor(nb, *_file(nid))
        urls[nid] = nb["status"]["url"]
    [container] = notebooks.containers(ids["running"])
    _command(notebooks, ids["stopped"], "stop")
    notebooks.wait(ids["stopped"], "STOPPED")
    _command(notebooks, ids["stopping"], "stop")
    return ids, container, urls


def _upgrade(stack: UpgradeStack, notebooks: Notebooks, stopping: str) -> None:
    """Every part that runs our code stops (SIGTERM, as docker-compose and systemd send)
    and starts again from today's code; Temporal too, whose search attributes come from
    the code. The control worker goes first, so that the stop just asked is still under
    way (cancelling the running phase, or tearing down) when the new code takes it on."""
    stack.kill("control-worker", signal.SIGTERM)
    mid = notebooks.get(stopping).json()["status"]
    assert mid["state"] == "STOPPING", f"the upgrade came too late to catch a stop: {mid}"
    for name in ("host-agent", "api", "temporal"):
        stack.kill(name, signal.SIGTERM)
    stack.code = REPO
    stack.start_temporal()
    stack.start_control_worker()
    stack.start_host_agent()
    stack.start_api()
    stack.wait_for_hosts([stack.host_name])


def _after_upgrade(
    stack: UpgradeStack,
    notebooks: Notebooks,
    ids: dict[str, str],
    container: Container,
    urls: dict[str, str],
) -> None:
    s3 = stack.s3_client()
    project = notebooks.project
    running, stopped, stopping = ids["running"], ids["stopped"], ids["stopping"]

    # The running notebook runs on, in the same container, at the same address.
    nb = notebooks.wait(running, "RUNNING", timeout=60)
    assert nb["status"]["url"] == urls[running], "the running notebook's address changed"
    [after] = notebooks.containers(running)
    assert after.id == container.id and after.status == "running", (
        "the running notebook's container was replaced or stopped by the upgrade"
    )
    name, text = _file(running)
    r = _read_through_editor(nb, name)
    assert r.status_code == 200 and r.json()["content"] == text, (
        f"the running notebook's editor does not answer through the new gateway: {r.text}"
    )

    # The stop the old code began is finished by the new one, with the workspace saved.
    notebooks.wait(stopping, "STOPPED", timeout=120)
    name, text = _file(stopping)
    assert _saved_workspace(s3, project, stopping).get(name) == text.encode(), (
        "the stop begun before the upgrade did not save the workspace to S3"
    )
    assert notebooks.containers(stopping) == [], (
        "the stop begun before the upgrade left a container"
    )

    # The running one stops under the new code and saves its workspace.
    _command(notebooks, running, "stop")
    notebooks.wait(running, "STOPPED")
    name, text = _file(running)
    assert _saved_workspace(s3, project, running).get(name) == text.encode(), (
        "the notebook running across the upgrade did not save its workspace to S3 at its stop"
    )

    # The one the old code stopped starts with its workspace back.
    _command(notebooks, stopped, "start")
    nb = notebooks.wait(stopped, "RUNNING", timeout=180)
    name, text = _file(stopped)
    r = _read_through_editor(nb, name)
    assert r.status_code == 200 and r.json()["content"] == text, (
        f"the notebook stopped before the upgrade started without its workspace: {r.text}"
    )

    for nid in ids.values():
        r = notebooks.delete(nid)
        assert r.status_code == 202, f"delete of {nid} answered {r.status_code}: {r.text}"
    for nid in ids.values():
        notebooks.wait(nid, "DELETED")
        assert notebooks.get(nid).status_code == 404, f"{nid} is still there once DELETED"
    left = notebooks.docker.containers.list(
        all=True, filters={"label": [MANAGED_LABEL, f"{PROJECT_LABEL}={project}"]}
    )
    assert left == [], f"containers left after every notebook was deleted: {left}"
