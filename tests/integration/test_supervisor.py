"""The embedded stack (`python -m worker.stack`, as scripts/up runs it) restarts a part
that dies, gives up on one that keeps dying, and leaves nothing behind when stopped."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import eventually
from worker.stack import ROOT, free_port
from worker.supervisor import Policy


class StackProcess:
    """The stack as a subprocess, its output collected line by line."""

    def __init__(self, data_dir: Path, api_port: int, cli_config: Path) -> None:
        self.data_dir = data_dir
        self.api_url = f"http://127.0.0.1:{api_port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AINB_")}
        # The stack points the CLI at itself: not this user's real CLI config.
        env["AINB_CLI_CONFIG"] = str(cli_config)
        argv = [sys.executable, "-m", "worker.stack", "--data-dir", str(data_dir)]
        # No notebook runs here: the local-process runtime spares the test a Docker engine.
        argv += ["--ports", "random", "--api-port", str(api_port), "--runtime", "local"]
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float, since: int = 0) -> re.Match:
        """The first line from index ``since`` on that matches."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines[since:]:
                if m := re.search(pattern, line):
                    return m
            assert self.proc.poll() is None, "the stack exited:\n" + self.output()
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r} in:\n{self.output()}")

    def output(self) -> str:
        return "\n".join(self.lines)

    def child(self, module: str) -> int:
        """The pid of the stack's child running ``python -m module``."""
        for pid, (ppid, cmdline) in _processes().items():
            if ppid == self.proc.pid and f"-m\0{module}\0" in cmdline:
                return pid
        raise AssertionError(f"no {module} under the stack:\n{self.output()}")

    def ours(self) -> list[str]:
        """Live processes started by this stack: they carry its config in their env."""
        marker = f"AINB_CONFIG={self.data_dir / 'config.json'}\0".encode()
        found = []
        for pid, (_, cmdline) in _processes().items():
            try:
                if marker in Path(f"/proc/{pid}/environ").read_bytes():
                    found.append(f"{pid} {cmdline.replace(chr(0), ' ')}")
            except OSError:
                pass  # gone already, or not ours to read
        return found


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, NUL-separated command line) of every live, non-zombie process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if state != "Z":
            table[int(entry.name)] = (int(ppid), cmdline)
    return table


@pytest.fixture()
def stack(tmp_path: Path) -> Iterator[StackProcess]:
    s = StackProcess(tmp_path / "ainb", free_port(), tmp_path / "cli.toml")
    try:
        yield s
    finally:
        if s.proc.poll() is None:
            s.proc.send_signal(signal.SIGTERM)
            try:
                s.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                s.proc.kill()
        for line in s.ours():  # a failed test still leaves nothing running
            os.kill(int(line.split()[0]), signal.SIGKILL)


def _api_answers(stack: StackProcess, timeout: float = 60) -> None:
    """/healthz, and /v1/hosts with the administrator token showing host 'local' up."""
    token = (stack.data_dir / "admin-token").read_text().strip()
    headers = {"authorization": f"Bearer {token}"}

    def up() -> bool:
        assert httpx.get(f"{stack.api_url}/healthz", timeout=5).status_code == 200
        r = httpx.get(f"{stack.api_url}/v1/hosts", headers=headers, timeout=10)
        assert r.status_code == 200 and {"local": "up"} == {
            h["name"]: h["state"] for h in r.json()["hosts"]
        }, r.text
        return True

    eventually(
        up,
        timeout=timeout,
        interval=0.5,
        retry_on=(httpx.HTTPError, AssertionError),
        what="the API to answer with host 'local' up",
    )


def _kill_and_see_restart(stack: StackProcess, name: str, module: str) -> int:
    """kill -9 the part; the stack says so with the exit code and its log, and starts it
    again. The new pid."""
    old = stack.child(module)
    since = len(stack.lines)
    os.kill(old, signal.SIGKILL)
    log = stack.data_dir / "logs" / f"{name}.log"
    stack.wait_for(
        rf"{name} exited with code -9 \(SIGKILL\); restarting it in \d+s .*{re.escape(str(log))}",
        10,
        since,
    )
    stack.wait_for(rf"ainb: {name} is up again", 60, since)
    new = stack.child(module)
    assert new != old
    return new


def _wait_for_log(stack: StackProcess, name: str, text: str, timeout: float = 30) -> None:
    """Until ``text`` is in the part's log after the stack last started it again."""
    log = stack.data_dir / "logs" / f"{name}.log"

    def logged() -> bool:
        after = log.read_text().rsplit(f"--- ainb stack: starting {name} again ---", 1)[-1]
        assert text in after, f"{text!r} not in {log} since the restart:\n{after[-3000:]}"
        return True

    eventually(logged, timeout=timeout, interval=0.25, what=f"{text!r} in {log}")


def test_parts_are_restarted_then_given_up_and_stop_leaves_nothing(
    stack: StackProcess,
) -> None:
    stack.wait_for(r"ainb is up", 120)
    _api_answers(stack)

    _kill_and_see_restart(stack, "control-worker", "worker.control")
    _api_answers(stack)

    _kill_and_see_restart(stack, "host-agent", "worker.host")
    # The new agent registered with the fleet again (the old one's registration would
    # still show 'up' for a while).
    _wait_for_log(stack, "host-agent", "host local registered with the fleet")
    _api_answers(stack)

    # The control worker dies at once after every start. Its first kill above counts
    # too unless it then ran for a minute: 5 or 6 kills (~30 s of backoff) give up.
    since = len(stack.lines)
    for _ in range(Policy().max_restarts + 1):
        start = len(stack.lines)
        os.kill(stack.child("worker.control"), signal.SIGKILL)
        stack.wait_for(r"control-worker is up again|GIVING UP on control-worker", 40, start)
        if any("GIVING UP" in line for line in stack.lines[since:]):
            break
    stack.wait_for(
        r"control-worker exited with code -9 \(SIGKILL\), exit \d+ in a row .*"
        r"GIVING UP on control-worker, the rest keeps running",
        1,
        since,
    )
    time.sleep(2)
    assert not [p for p in stack.ours() if "worker.control" in p]  # no further attempt
    assert httpx.get(f"{stack.api_url}/healthz", timeout=5).status_code == 200

    # A stop is not a crash: no restart, and every part is gone.
    children = stack.ours()
    assert len(children) >= 4, children  # Temporal, SeaweedFS, host agent, API
    since = len(stack.lines)
    stack.proc.send_signal(signal.SIGTERM)
    assert stack.proc.wait(timeout=60) == 0, stack.output()
    time.sleep(0.5)  # the reader thread takes the last lines
    tail = stack.lines[since:]
    assert "stopped." in tail, stack.output()
    assert not [line for line in tail if "restarting" in line or "exited" in line], tail
    assert stack.ours() == []
