"""The local-process runtime, only when asked for by name (single-user development): the
same lifecycle with JupyterLab as a host process in the notebook's directory, on a Unix
socket like a container's editor, with none of the agent's environment."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from activities.runtime import editor_socket
from domain.tokens import editor_token
from tests.support import eventually
from worker.stack import Ports, Stack


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory) -> Iterator[Stack]:
    s = Stack(
        tmp_path_factory.mktemp("ainb-local"),
        Ports.random(),
        runtime="local",
        extra_env={"AINB_HEARTBEAT_TIMEOUT_S": "5", "AINB_STOP_GRACE_S": "10"},
    )
    try:
        s.start()
        yield s
    finally:
        s.stop()


def _wait(api: httpx.Client, path: str, state: str, timeout: float = 120) -> dict:
    def reached() -> dict:
        r = api.get(path)
        if r.status_code == 404 and state == "DELETED":
            return {"status": {"state": "DELETED"}}
        nb = r.json()
        assert nb["status"]["state"] == state, f"never reached {state}: {nb['status']}"
        return nb

    return eventually(reached, timeout=timeout, interval=0.2, what=f"{path} to be {state}")


def test_lifecycle_without_docker(local_stack: Stack) -> None:
    assert "local-process runtime" in (local_stack.data_dir / "logs" / "host-agent.log").read_text()
    with local_stack.api_client(timeout=60) as api:
        base = "/v1/projects/local/notebooks"
        r = api.post(
            base,
            json={
                "name": "proc",
                "framework": {"id": "python"},
                "resources": {"flavor": "ai1-1-cpu", "cpu": 1},
            },
        )
        assert r.status_code == 201, r.text
        nid = r.json()["id"]
        path = f"{base}/{nid}"
        nb = _wait(api, path, "RUNNING")
        url = nb["status"]["url"]
        server = url.split("/lab")[0]  # the notebook's origin, at the gateway
        editor = nb["status"]["endpoint"].removeprefix("unix:")  # the process's socket
        assert _answers(editor)
        assert httpx.get(f"{server}/api/status").status_code == 401
        token = url.split("token=")[1]
        own = editor_token(local_stack.secrets["token_secret"], nid).encode()
        # The editor gets none of the agent's environment (its settings name the secrets)
        # and its token is in no process's argv.
        run_dir = local_stack.data_dir / "hosts" / "local" / "local-runtime" / nid
        pid = int((run_dir / "editor.pid").read_text())
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert not [v for v in environ if v.startswith(b"AINB_")], environ
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    cmdline = (proc / "cmdline").read_bytes()
                    assert token.encode() not in cmdline and own not in cmdline
                except (FileNotFoundError, ProcessLookupError, PermissionError):
                    pass
        auth = {"Authorization": f"token {token}"}
        r = httpx.put(
            f"{server}/api/contents/notes.txt",
            headers=auth,
            json={"type": "file", "format": "text", "content": "kept across restarts"},
        )
        assert r.status_code in (200, 201), r.text

        assert api.post(f"{path}/stop").status_code == 202
        _wait(api, path, "STOPPED")
        assert not _answers(editor)  # the editor process is gone

        assert api.post(f"{path}/start").status_code == 202
        nb = _wait(api, path, "RUNNING")
        assert nb["status"]["url"].split("/lab")[0] == server
        editor = nb["status"]["endpoint"].removeprefix("unix:")
        r = httpx.get(f"{server}/api/contents/notes.txt", headers=auth)
        assert r.status_code == 200 and r.json()["content"] == "kept across restarts"

        assert api.delete(path).status_code == 202
        _wait(api, path, "DELETED")
        assert not _answers(editor)


def _answers(socket_path: str) -> bool:
    return editor_socket.probe(Path(socket_path), "/api/status", timeout=1) is not None


def test_vscode_needs_a_docker_host(local_stack: Stack) -> None:
    # Said at once, not after the editor's start timeout.
    with local_stack.api_client(timeout=60) as api:
        base = "/v1/projects/local/notebooks"
        r = api.post(
            base,
            json={
                "name": "code",
                "editor": "vscode",
                "framework": {"id": "python"},
                "resources": {"flavor": "ai1-1-cpu", "cpu": 1},
            },
        )
        assert r.status_code == 201, r.text
        path = f"{base}/{r.json()['id']}"
        nb = _wait(api, path, "ERROR", timeout=30)
        assert nb["status"]["info"]["code"] == "IMAGE_NOT_FOUND"
        assert "JupyterLab only" in nb["status"]["info"]["message"]
        assert api.delete(path).status_code == 202
        _wait(api, path, "DELETED")
