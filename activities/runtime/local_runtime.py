"""Local-process runtime: the editor as a subprocess in the notebook's own directory.

Only when asked for (`--runtime local`): a single-user development choice. There is no
isolation: the notebook's code runs as a host process with the agent's user, volumes
appear as symlinks inside the workspace and ``ro`` is not enforced. It still gets
nothing of the agent's environment or configuration, listens on a Unix socket like a
container's editor, and its token is never in argv. The process outlives the host agent,
so its pid and exit code live in files.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from activities.runtime.base import ContainerState, ImageNotFound, LaunchSpec
from activities.runtime.file_logs import FileLogStream
from domain.ids import container_name


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


class LocalRuntime:
    name = "local-process"
    serves_http = True

    def __init__(self, state_dir: Path) -> None:
        self._dir = state_dir

    def _files(self, notebook_id: str) -> tuple[Path, Path, Path]:
        d = self._dir / notebook_id
        return d, d / "editor.pid", d / "editor.exit"

    def editor_command(self, spec: LaunchSpec) -> list[str]:
        if spec.editor != "jupyterlab":
            raise ImageNotFound(
                f"the local-process runtime runs JupyterLab only; a {spec.editor} notebook "
                "needs a host with a Docker engine"
            )
        if importlib.util.find_spec("jupyterlab") is None:
            raise ImageNotFound(
                "the local-process runtime needs JupyterLab on the host: pip install -e '.[local]'"
            )
        return [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            # Relative to the process's directory (the run directory): a socket's path is
            # limited to 107 bytes, which a data directory's depth would exceed.
            "--ServerApp.sock=editor.sock",
            "--ServerApp.sock_mode=0600",
            # Its Host is the notebook's origin; only this agent can reach the socket.
            "--ServerApp.allow_remote_access=True",
            f"--ServerApp.root_dir={spec.workspace}",
            "--ServerApp.base_url=/",
            "--ServerApp.password=",
            "--LabApp.news_url=None",
            "--allow-root",
            # The token, if any, comes through the environment (argv is public).
            *([] if spec.env.get("AINB_EDITOR_TOKEN") else ["--IdentityProvider.token="]),
        ]

    @staticmethod
    def editor_env(spec: LaunchSpec, home: Path) -> dict[str, str]:
        """The user's variables and what the editor needs: nothing of the agent's."""
        env = {k: v for k, v in spec.env.items() if not k.startswith("AINB_")}
        env.update(
            PATH=os.environ.get("PATH", "/usr/bin:/bin"),
            LANG=os.environ.get("LANG", "C.UTF-8"),
            HOME=str(home),
            JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        )
        if token := spec.env.get("AINB_EDITOR_TOKEN"):
            env["JUPYTER_TOKEN"] = token
        return env

    def start(self, spec: LaunchSpec) -> ContainerState:
        current = self.poll(spec.notebook_id)
        if current is not None and current.running:
            return current
        d, pid_file, exit_file = self._files(spec.notebook_id)
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        exit_file.unlink(missing_ok=True)
        spec.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (spec.run_dir / "editor.sock").unlink(missing_ok=True)
        for mount in spec.mounts:
            link = spec.workspace / mount.target.removeprefix("/workspace/")
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink() or link.exists():
                if link.is_dir() and not link.is_symlink():
                    link.rmdir()
                else:
                    link.unlink()
            link.symlink_to(mount.source, target_is_directory=True)
        command = shlex.join(self.editor_command(spec))
        # The shell records the exit code, which a restarted agent could not otherwise learn.
        wrapper = f"{command}; echo $? > {shlex.quote(str(exit_file))}"
        env = self.editor_env(spec, d)
        log = open(d / "editor.log", "ab")
        proc = subprocess.Popen(
            ["sh", "-c", wrapper],
            cwd=spec.run_dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        pid_file.write_text(str(proc.pid))
        (d / "editor.project").write_text(spec.project)
        return ContainerState(name=container_name(spec.notebook_id), running=True, exit_code=None)

    def poll(self, notebook_id: str) -> ContainerState | None:
        _, pid_file, exit_file = self._files(notebook_id)
        if not pid_file.exists():
            return None
        pid = int(pid_file.read_text())
        running = _alive(pid)
        exit_code = None
        if not running:
            text = exit_file.read_text().strip() if exit_file.exists() else ""
            exit_code = int(text) if text else -1
        return ContainerState(
            name=container_name(notebook_id), running=running, exit_code=exit_code
        )

    def stop(self, notebook_id: str, grace_s: float) -> ContainerState | None:
        state = self.poll(notebook_id)
        if state is None:
            return None
        _, pid_file, exit_file = self._files(notebook_id)
        pid = int(pid_file.read_text())
        if state.running:
            try:
                os.killpg(pid, signal.SIGTERM)
                deadline = time.monotonic() + grace_s
                while _alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.1)
                if _alive(pid):
                    os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            state = self.poll(notebook_id)
        pid_file.unlink(missing_ok=True)
        exit_file.unlink(missing_ok=True)
        return state

    def managed(self) -> dict[str, str]:
        if not self._dir.is_dir():
            return {}
        return {
            d.name: (d / "editor.project").read_text() if (d / "editor.project").exists() else ""
            for d in self._dir.iterdir()
            if (d / "editor.pid").exists()
        }

    def log_stream(self, notebook_id: str, tail: int, follow: bool):
        d = self._dir / notebook_id
        if not (d / "editor.pid").exists():
            return None
        return FileLogStream(
            d / "editor.log",
            tail,
            follow,
            alive=lambda: bool((s := self.poll(notebook_id)) and s.running),
        )

    def logs(self, notebook_id: str, tail: int = 50) -> str:
        path = self._dir / notebook_id / "editor.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-tail:])
