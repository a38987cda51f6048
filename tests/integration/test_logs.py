"""A notebook's container output, streamed from the host agent that runs it: through the
REST API (`…/logs`, with `tail` and `follow`) and `ainb logs`."""

from __future__ import annotations

import queue
import threading
import time

import httpx
import pytest

from tests.integration.conftest import Notebooks

pytestmark = pytest.mark.docker


def _say(container, text: str) -> None:
    # What PID 1 writes to its stdout is the container's output.
    code, out = container.exec_run(["sh", "-c", f"echo {text} > /proc/1/fd/1"])
    assert code == 0, out


def test_logs_tail_follow_and_cli(notebooks: Notebooks, cli) -> None:
    nid = notebooks.create(name="talks")["id"]
    notebooks.wait(nid, "RUNNING")
    [container] = notebooks.containers(nid)
    logs = f"{notebooks.base}/{nid}/logs"

    everything = notebooks.api.get(logs)
    assert everything.status_code == 200, everything.text
    assert "Jupyter Server" in everything.text
    _say(container, "first-marker")
    last = notebooks.api.get(logs, params={"tail": 1})
    assert last.text.strip() == "first-marker"
    assert notebooks.api.get(logs, params={"tail": -1}).status_code == 422

    # follow: lines written after the request arrive on the open stream.
    lines: queue.Queue[str] = queue.Queue()

    def reader() -> None:
        with notebooks.api.stream(
            "GET", logs, params={"follow": True, "tail": 0}, timeout=httpx.Timeout(10, read=None)
        ) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                lines.put(line)
        lines.put("<end>")

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    time.sleep(1)  # the stream is open before the line is written
    _say(container, "followed-marker")
    seen = []
    deadline = time.monotonic() + 20
    while "followed-marker" not in seen:
        seen.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
    assert "first-marker" not in seen  # tail=0: only what comes next

    r = cli("logs", nid, "--tail", "5")
    assert r.returncode == 0, r.stderr
    assert "followed-marker" in r.stdout

    # The stream ends when the container does.
    assert notebooks.command(nid, "stop").status_code == 202
    notebooks.wait(nid, "STOPPED")
    while seen[-1] != "<end>":
        seen.append(lines.get(timeout=30))
    thread.join(5)

    stopped = notebooks.api.get(logs)
    assert stopped.status_code == 409 and "STOPPED" in stopped.json()["error"]
    r = cli("logs", nid)
    assert r.returncode == 2 and "no output to show" in r.stderr
    assert notebooks.delete(nid).status_code == 202
    notebooks.wait(nid, "DELETED")
