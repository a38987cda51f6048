"""Status reads from the API's cache, and watching a notebook instead of polling it: a
GET after a command shows the command, the long poll (`?wait_for_change=`) answers on
a change, and the event stream (`/events`) delivers a whole lifecycle once and in order,
resuming where a client left off."""

from __future__ import annotations

import itertools
import json
import queue
import threading

import httpx
import pytest

from tests.integration.conftest import Notebooks

pytestmark = pytest.mark.docker

LIFECYCLE = ["STARTING", "RUNNING", "STOPPING", "STOPPED", "DELETING", "DELETED"]


class Reader:
    """One event stream read on a thread, its notebooks in a queue (None: it ended)."""

    def __init__(self, api: httpx.Client, path: str, last_event_id: int | None = None) -> None:
        self.got: queue.Queue[dict | None] = queue.Queue()
        self.transitions: list[dict] = []
        self._left = threading.Event()
        headers = {} if last_event_id is None else {"last-event-id": str(last_event_id)}
        self._response = api.send(
            api.build_request("GET", path + "/events", headers=headers, timeout=60),
            stream=True,
        )
        assert self._response.status_code == 200, self._response.read()
        assert self._response.headers["content-type"].startswith("text/event-stream")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        event: dict[str, str] = {}
        try:
            for line in self._response.iter_lines():
                if line.startswith(":"):
                    continue  # a keep-alive
                if line:
                    name, _, value = line.partition(":")
                    event[name] = value.removeprefix(" ")
                    continue
                if "data" in event:
                    body = json.loads(event["data"])
                    if event["event"] == "transition":
                        assert int(event["id"]) == body["version"], event
                        self.transitions.append(body)
                    else:
                        assert event["event"] == "notebook", event
                        assert int(event["id"]) == body["status"]["version"], event
                        self.got.put(body)
                event = {}
        except httpx.HTTPError:
            if not self._left.is_set():
                raise
        finally:
            self.got.put(None)

    def until(self, state: str, timeout: float = 120) -> list[dict]:
        """Every notebook received up to the first one in ``state``."""
        out: list[dict] = []
        while True:
            nb = self.got.get(timeout=timeout)
            assert nb is not None, f"the stream ended before {state}: {[_seen(n) for n in out]}"
            out.append(nb)
            if nb["status"]["state"] == state:
                return out

    def leave(self) -> list[dict]:
        """The client goes away; what had come in meanwhile."""
        self._left.set()
        self._response.close()
        self._thread.join(timeout=30)
        rest: list[dict] = []
        while (nb := self.got.get(timeout=5)) is not None:
            rest.append(nb)
        return rest


def _seen(nb: dict) -> str:
    return f"{nb['status']['state']}@{nb['status']['version']}"


def _view(nb: dict) -> dict:
    """What a change is: everything but the version."""
    return {**nb, "status": {k: v for k, v in nb["status"].items() if k != "version"}}


def test_a_get_after_a_command_shows_it_and_the_long_poll_answers_a_change(
    notebooks: Notebooks,
) -> None:
    nid = notebooks.create(name="watched")["id"]
    path = f"{notebooks.base}/{nid}"
    nb = notebooks.wait(nid, "RUNNING")
    version = nb["status"]["version"]
    assert version > 0
    # Nothing changes: the long poll waits its time and answers the same version.
    r = notebooks.api.get(path, params={"wait_for_change": version, "timeout_s": 1})
    assert r.status_code == 200 and r.json()["status"]["version"] == version, r.text

    stopped = notebooks.command(nid, "stop")
    assert stopped.status_code == 202, stopped.text
    answer = stopped.json()["status"]
    assert answer["state"] == "STOPPING" and answer["version"] > version
    # The very next GET shows the command (the cache asks the workflow again after it).
    after = notebooks.get(nid).json()["status"]
    assert after["state"] in ("STOPPING", "STOPPED") and after["version"] >= answer["version"]

    # A long poll from the stop's version answers once the notebook moves on.
    current = after
    while current["state"] != "STOPPED":
        r = notebooks.api.get(path, params={"wait_for_change": current["version"], "timeout_s": 30})
        assert r.status_code == 200, r.text
        moved = r.json()["status"]
        assert moved["version"] > current["version"], (current, moved)
        current = moved
    assert notebooks.delete(nid).status_code == 202
    # Waiting on a notebook that is deleted meanwhile ends in its 404.
    r = notebooks.api.get(path, params={"wait_for_change": current["version"], "timeout_s": 60})
    while r.status_code == 200:
        r = notebooks.api.get(
            path, params={"wait_for_change": r.json()["status"]["version"], "timeout_s": 60}
        )
    assert r.status_code == 404, r.text


def test_the_event_stream_delivers_a_lifecycle_once_in_order_and_resumes(
    notebooks: Notebooks,
) -> None:
    nid = notebooks.create(name="streamed")["id"]
    path = f"{notebooks.base}/{nid}"
    first = Reader(notebooks.api, path)
    got = first.until("RUNNING")
    got += first.leave()  # the client goes away here...
    last = got[-1]

    assert notebooks.command(nid, "stop").status_code == 202
    # ...and comes back from the last event it had, while the notebook moves on.
    second = Reader(notebooks.api, path, last_event_id=last["status"]["version"])
    resumed = second.until("STOPPED")
    assert notebooks.delete(nid).status_code == 202
    resumed += second.until("DELETED")
    assert second.got.get(timeout=30) is None  # the stream ends with the deletion

    events = got + resumed
    seen = [_seen(nb) for nb in events]
    # Each change once: no event repeats the one before it, across the reconnect too.
    for before, after in itertools.pairwise(events):
        assert _view(before) != _view(after), seen
        assert before["status"]["version"] <= after["status"]["version"], seen
    # The notebooks' states follow the lifecycle (a state shorter than a status read may
    # have no notebook of its own)...
    states = [nb["status"]["state"] for nb in events]
    runs = [s for i, s in enumerate(states) if i == 0 or states[i - 1] != s]
    assert runs == [s for s in LIFECYCLE if s in runs], seen
    assert runs[0] == "STARTING" and runs[-1] == "DELETED", seen
    # ...and every change of state after the first notebook came as a transition, once,
    # in order, none from before it, across the reconnect.
    moves = [t["state"] for t in first.transitions + second.transitions]
    assert moves == LIFECYCLE[LIFECYCLE.index(runs[0]) + 1 :], (moves, seen)
    versions = [t["version"] for t in first.transitions + second.transitions]
    assert versions == sorted(versions) and versions[0] > got[0]["status"]["version"]
    # The stream shows what GET shows: the editor's address while it runs.
    running = next(nb for nb in events if nb["status"]["state"] == "RUNNING")
    assert running["status"]["url"] and "token=" in running["status"]["url"]
    assert notebooks.get(nid).status_code == 404


def test_streams_and_long_polls_of_an_unknown_notebook_are_404(notebooks: Notebooks) -> None:
    path = f"{notebooks.base}/{'0' * 32}"
    assert notebooks.api.get(path + "/events").status_code == 404
    assert notebooks.api.get(path, params={"wait_for_change": 1}).status_code == 404
