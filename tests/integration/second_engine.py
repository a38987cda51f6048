"""A second Docker engine on this machine, so that two host agents each have an engine of
their own and the fleet has two real hosts.

It shares nothing with the engine tests already use (/var/run/docker.sock): its own data
root, exec root (and so its own containerd, which dockerd starts under it), socket,
pidfile, containerd namespaces, cgroup parent and an empty config file, so that no
setting of the main engine's /etc/docker/daemon.json applies. No bridge and no iptables
rules: notebooks run with network "none", and nothing on the machine's network changes.

Everything lives in one directory under ENGINES_ROOT; :func:`second_engine` removes its
containers, stops the daemon and removes the directory, however the block ends. Should
the test process itself die, dockerd gets SIGTERM (parent-death signal) and stops its
containers; the next start removes the directories of engines whose owner is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors

log = logging.getLogger("ainb.second_engine")

# Short on purpose: a Unix socket's path must fit in 107 bytes, and containerd's sockets
# sit a few levels below the exec root.
ENGINES_ROOT = Path("/tmp/ainb-engines")
_PR_SET_PDEATHSIG = 1


@dataclass
class Engine:
    socket: Path
    client: docker.DockerClient
    directory: Path
    proc: subprocess.Popen
    # Seconds each copied image took (save | load), by image id.
    copy_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """What DOCKER_HOST says to reach this engine."""
        return f"unix://{self.socket}"

    def ensure_images(self, source: docker.DockerClient, *refs: str) -> None:
        """Copy each image from ``source`` unless this engine has it by id already, so a
        copy is made once however many tests ask (a few seconds for JupyterLab's)."""
        for ref in refs:
            image = source.images.get(ref)
            try:
                if ref in self.client.images.get(image.id).tags:
                    continue
            except docker.errors.ImageNotFound:
                pass
            began = time.monotonic()
            _copy_image(ref, self.url)
            self.copy_seconds[image.id] = time.monotonic() - began
            log.warning("copied %s to %s in %.1fs", ref, self.url, self.copy_seconds[image.id])
            assert ref in self.client.images.get(image.id).tags, f"{ref} did not arrive"


def _copy_image(ref: str, url: str) -> None:
    # The CLI streams the archive from one engine to the other: nothing of it is held in
    # memory or written to disk on the way.
    save = subprocess.Popen(["docker", "save", ref], stdout=subprocess.PIPE)
    assert save.stdout is not None
    try:
        load = subprocess.run(
            ["docker", "-H", url, "load", "--quiet"],
            stdin=save.stdout,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        save.stdout.close()
        saved = save.wait(timeout=600)
    if saved != 0 or load.returncode != 0:
        raise RuntimeError(f"copying {ref} to {url}: save exited {saved}; load: {load.stderr}")


def _parent_death_signal() -> None:
    # Runs in the child between fork and exec: dockerd hears it when the tests die.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def dockerd_argv(directory: Path) -> list[str]:
    tag = f"ainb-{directory.name}"
    return [
        "dockerd",
        f"--config-file={directory / 'daemon.json'}",
        f"--data-root={directory / 'data'}",
        f"--exec-root={directory / 'exec'}",
        f"--pidfile={directory / 'dockerd.pid'}",
        f"--host=unix://{directory / 'docker.sock'}",
        # Only used if a system containerd serves /run/containerd (then both engines would
        # share it): each engine's containers in namespaces of their own.
        f"--containerd-namespace={tag}",
        f"--containerd-plugins-namespace={tag}-plugins",
        f"--cgroup-parent=/{tag}",
        "--bridge=none",
        "--iptables=false",
        "--ip-forward=false",
        "--ip-masq=false",
    ]


@contextlib.contextmanager
def second_engine(start_timeout_s: float = 90) -> Iterator[Engine]:
    """A Docker engine of its own, up and answering, for the block's length."""
    if shutil.which("dockerd") is None:
        raise RuntimeError("dockerd is not installed (apt-get install docker.io)")
    if os.geteuid() != 0:
        raise RuntimeError("a second Docker engine needs root")
    ENGINES_ROOT.mkdir(mode=0o700, exist_ok=True)
    remove_abandoned()
    directory = Path(tempfile.mkdtemp(prefix="", dir=ENGINES_ROOT))
    (directory / "owner").write_text(str(os.getpid()))
    (directory / "daemon.json").write_text("{}")
    logfile = open(directory / "dockerd.log", "ab")
    proc = subprocess.Popen(
        dockerd_argv(directory),
        stdout=logfile,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C of the tests reaches us, and we stop it in order
        preexec_fn=_parent_death_signal,
    )
    logfile.close()
    client: docker.DockerClient | None = None
    try:
        client = _wait_until_up(directory, proc, start_timeout_s)
        yield Engine(directory / "docker.sock", client, directory, proc)
    finally:
        try:
            if client is not None:
                _remove_containers(client)
                client.close()
        finally:
            _stop(directory, proc)
            _remove_directory(directory)


def _wait_until_up(directory: Path, proc: subprocess.Popen, timeout: float) -> docker.DockerClient:
    sock = directory / "docker.sock"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dockerd exited with {proc.returncode}:\n{_log_tail(directory)}")
        if sock.exists():
            client = docker.DockerClient(base_url=f"unix://{sock}", timeout=120)
            try:
                if client.ping():
                    return client
            except (docker.errors.DockerException, OSError):
                pass
            client.close()
        time.sleep(0.2)
    raise RuntimeError(f"dockerd did not answer within {timeout:.0f}s:\n{_log_tail(directory)}")


def _log_tail(directory: Path) -> str:
    path = directory / "dockerd.log"
    return path.read_text(errors="replace")[-4000:] if path.exists() else "(no log)"


def _remove_containers(client: docker.DockerClient) -> None:
    # Every container of this engine is the tests' own: the engine was made for them.
    for container in client.containers.list(all=True):
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)


def _ours(pid: int, directory: Path) -> bool:
    """Whether ``pid`` is a live process started for ``directory`` (dockerd, or the
    containerd it supervises): its command line names the directory."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return str(directory) in cmdline


def _pid_in(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _stop(directory: Path, proc: subprocess.Popen | None) -> None:
    """dockerd politely (it stops its containers and its containerd), then by force."""
    pid = proc.pid if proc is not None else _pid_in(directory / "dockerd.pid")
    if pid is not None and _ours(pid, directory):
        os.kill(pid, signal.SIGTERM)
        if not _gone(pid, proc, 45):
            log.warning("dockerd %d did not stop in 45s: killing it", pid)
            os.kill(pid, signal.SIGKILL)
            _gone(pid, proc, 10)
    containerd = _pid_in(directory / "exec" / "containerd" / "containerd.pid")
    if containerd is not None and _ours(containerd, directory):
        os.kill(containerd, signal.SIGKILL)


def _gone(pid: int, proc: subprocess.Popen | None, timeout: float) -> bool:
    if proc is not None:
        try:
            proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _remove_directory(directory: Path) -> None:
    # A daemon that was killed leaves its mounts (overlay layers, the private bind of its
    # storage root): rmtree would descend into them.
    for point in sorted(_mounts_under(directory), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    shutil.rmtree(directory, ignore_errors=True)


def _mounts_under(directory: Path) -> list[str]:
    prefix = str(directory) + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix):
            points.append(point)
    return points


def remove_abandoned() -> None:
    """Engines of earlier test runs whose process is gone (killed before its cleanup)."""
    for directory in sorted(ENGINES_ROOT.iterdir()):
        owner = _pid_in(directory / "owner")
        if owner is not None and Path(f"/proc/{owner}").exists():
            continue  # another test run's, still in use
        if owner is None and time.time() - directory.stat().st_mtime < 300:
            continue  # being made right now: its owner is not written yet
        log.warning("removing the abandoned engine in %s", directory)
        sock = directory / "docker.sock"
        pid = _pid_in(directory / "dockerd.pid")
        if sock.exists() and pid is not None and _ours(pid, directory):
            with contextlib.suppress(docker.errors.DockerException, OSError):
                client = docker.DockerClient(base_url=f"unix://{sock}", timeout=30)
                _remove_containers(client)
                client.close()
        _stop(directory, None)
        _remove_directory(directory)


def describe(engine: Engine) -> str:
    """The engine's containers, for a failure's message."""
    return json.dumps(
        [
            {"name": c.name, "status": c.status, "labels": c.labels}
            for c in engine.client.containers.list(all=True)
        ]
    )
