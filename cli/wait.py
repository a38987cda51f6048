"""``--wait``: follow a notebook until it reaches a state, one line per change seen, on
the API's event stream of the notebook (`GET …/{id}/events`), not by polling.

A change is a new state, a new ``status.info`` (queue position, sync progress text), or new
numbers of a sync under way (a volume's or the workspace's ``last_sync``, a datasync).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from cli.client import ApiError, Client, Unreachable
from cli.render import sync_text

# Between reconnects when the API did not answer.
POLL_S = 0.5
# The API or Temporal restarting is not the notebook failing: keep asking this long.
UNREACHABLE_GRACE_S = 60.0
BROKEN = ("FAILED", "ERROR")
ACTIVE = ("STARTING", "RUNNING", "STOPPING")


class WaitFailed(Exception):
    """The notebook ended somewhere other than the target; the message says where and why."""


def _info(status: dict) -> str:
    info = status.get("info") or {}
    code, message = info.get("code"), info.get("message") or ""
    return f"{code}: {message}" if code and message else (code or message)


def observations(notebook: dict) -> dict[str, tuple[bool, str]]:
    """What a person would want to see change: key -> (under way, text)."""
    status = notebook["status"]
    seen: dict[str, tuple[bool, str]] = {}
    holders = [(v["mount_path"], v.get("last_sync")) for v in status.get("volumes") or []]
    if status.get("workspace"):
        holders.append(("workspace", status["workspace"].get("last_sync")))
    for target, sync in holders:
        if sync:
            text = f"sync {sync['direction']} {target} {sync_text(sync)}"
            seen[f"sync {target}"] = (sync.get("state") == "running", text)
    for job in status.get("datasyncs") or []:
        text = f"datasync {job['direction']} {job.get('volume') or 'all'} {sync_text(job)}"
        seen[f"datasync {job['id']}"] = (job.get("state") in ("queued", "running"), text)
    # The state last: when a sync ends with the phase, the line that says where the
    # notebook now is comes after it.
    seen["state"] = (True, f"{status['state']:<9} {_info(status)}".rstrip())
    return seen


class Follower:
    """Turns successive GETs of one notebook into the lines that changed."""

    def __init__(self) -> None:
        self._shown: dict[str, str] = {}

    def lines(self, notebook: dict) -> list[str]:
        out = []
        for key, (under_way, text) in observations(notebook).items():
            # A finished sync is shown only if it was followed while under way: the
            # last_sync of an earlier run is history, not progress.
            if self._shown.get(key) != text and (under_way or key in self._shown):
                self._shown[key] = text
                out.append(text)
        return out


def _stamp() -> str:
    return datetime.now(UTC).strftime("%H:%M:%S")


def follow(
    client: Client,
    notebook: dict,
    target: str,
    emit: Callable[[str], None],
    *,
    poll_s: float = POLL_S,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict | None:
    """Follow from ``notebook`` (the command's answer) until ``target``, on the API's
    event stream of the notebook (reconnecting from the last version seen); return the
    last notebook seen (None once deleted). Raise WaitFailed if it ends elsewhere."""
    follower = Follower()
    notebook_id = notebook["id"]
    was_active = notebook["status"]["state"] in ACTIVE
    unreachable_since: float | None = None
    current: dict | None = notebook
    version: int | None = None
    stream: Iterator[dict] | None = None
    while True:
        if current is not None and current["status"]["state"] == "DELETED":
            if target != "DELETED":
                raise WaitFailed(f"notebook {notebook_id} is being deleted")
            emit(f"{_stamp()}  DELETED")  # as when a GET finds it gone
            return None
        if current is not None:
            version = current["status"].get("version", version)
            for line in follower.lines(current):
                emit(f"{_stamp()}  {line}")
            state = current["status"]["state"]
            if state == target:
                return current
            if state in BROKEN:
                raise WaitFailed(
                    f"notebook {notebook_id} is {state}: {_info(current['status']) or 'no details'}"
                )
            if target != "DELETED" and state in ("DELETING", "DELETED"):
                raise WaitFailed(f"notebook {notebook_id} is being deleted")
            if target == "RUNNING" and state == "STOPPED" and was_active:
                raise WaitFailed(
                    f"notebook {notebook_id} stopped before it was running: "
                    f"{_info(current['status']) or 'no details'}"
                )
            was_active = was_active or state in ACTIVE
        try:
            if stream is None:
                stream = iter(client.changes(notebook_id, version))
            current = next(stream)
            unreachable_since = None
        except StopIteration:
            stream, current = None, None  # the server ended the stream: go on from `version`
        except ApiError as err:
            stream = None
            if err.status == 404:
                if target == "DELETED":
                    emit(f"{_stamp()}  DELETED")
                    return None
                raise WaitFailed(f"notebook {notebook_id} no longer exists") from None
            if err.client_error:
                raise
            current, unreachable_since = None, _retry(err, unreachable_since, clock, emit)
            sleep(poll_s)
        except Unreachable as err:
            stream = None
            current, unreachable_since = None, _retry(err, unreachable_since, clock, emit)
            sleep(poll_s)


def _retry(
    err: Exception, since: float | None, clock: Callable[[], float], emit: Callable[[str], None]
) -> float:
    now = clock()
    if since is None:
        emit(f"{_stamp()}  (the API did not answer: {err}; still waiting)")
        return now
    if now - since > UNREACHABLE_GRACE_S:
        raise err
    return since
