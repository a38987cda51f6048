"""What test_chaos.py and test_outages.py share: a stack of their own (they kill parts of
it, which must never disturb the session's shared stack), an API client that rides out
those outages, the editor's files through the gateway, and the billing the workflows'
own histories imply."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs

import docker
import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHistory

from activities.runtime.docker_runtime import MANAGED_LABEL, NOTEBOOK_LABEL, PROJECT_LABEL
from domain.config import JUPYTERLAB_IMAGE, VSCODE_IMAGE
from domain.ids import workflow_id, workspace_prefix
from ledger.usage import UsageLedger
from tests.integration.conftest import FAST_TIMINGS
from tests.support import eventually
from worker.stack import Ports, Stack

log = logging.getLogger("ainb.chaos")

WORKSPACE_BUCKET = "ainb-workspaces"
# The conftest stack's timings, so that outages here meet the same platform behaviour.
BASE_ENV = dict(FAST_TIMINGS)
FRAMEWORKS = {
    "python": {
        "default_version": "3.11",
        "versions": {"3.11": {"images": {"jupyterlab": JUPYTERLAB_IMAGE, "vscode": VSCODE_IMAGE}}},
    }
}
# Commands wait up to 30 s for a worker to accept them (api/service.py): wait longer.
HTTP_TIMEOUT_S = 45


@contextlib.contextmanager
def own_stack(
    data_dir: Path,
    docker_client: docker.DockerClient,
    project: str,
    env: dict[str, str],
    *,
    ledger_url: str | None = None,
    config: dict | None = None,
    extra_hosts: dict[str, dict[str, str]] | None = None,
) -> Iterator[Stack]:
    """A whole stack on random ports and its own data directory; whatever containers of
    ``project`` are left at the end are removed (after the tests looked for them).
    ``config`` is merged into its config file, ``extra_hosts`` are more host agents."""
    stack = Stack(
        data_dir,
        Ports.random(),
        runtime="docker",
        extra_env={**BASE_ENV, **env},
        config_overrides={"frameworks": FRAMEWORKS, **(config or {})},
        ledger_url=ledger_url,
        extra_hosts=extra_hosts or {},
    )
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        for c in managed_containers(docker_client, project):
            c.remove(force=True)


def managed_containers(docker_client: docker.DockerClient, project: str, nid: str = "") -> list:
    labels = [MANAGED_LABEL, f"{PROJECT_LABEL}={project}"]
    if nid:
        labels.append(f"{NOTEBOOK_LABEL}={nid}")
    return docker_client.containers.list(all=True, filters={"label": labels})


def running(stack: Stack, name: str) -> bool:
    proc = stack.procs.get(name)
    return proc is not None and proc.poll() is None


class Gone(Exception):
    """The API answered 404 for the notebook."""


class Api:
    """The REST API for one project, retrying what fails while parts are down (5xx,
    connection errors, timeouts) for at most ``budget_s`` per call."""

    def __init__(self, stack: Stack, project: str, budget_s: float = 150) -> None:
        self.stack = stack
        self.project = project
        self.base = f"/v1/projects/{project}/notebooks"
        self.budget_s = budget_s
        self.http = stack.api_client(timeout=HTTP_TIMEOUT_S)
        self.retries = 0

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs) -> tuple[httpx.Response, int]:
        """The first answer below 500, and how many attempts failed before it."""
        deadline = time.monotonic() + self.budget_s
        failed = 0
        while True:
            try:
                r = self.http.request(method, path, **kwargs)
                if r.status_code < 500:
                    return r, failed
                problem = f"{r.status_code} {r.text[:300]}"
            except httpx.TransportError as err:
                problem = repr(err)
            failed += 1
            self.retries += 1
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{method} {path}: expected an answer below 500 within {self.budget_s:.0f}s, "
                    f"still failing after {failed} attempts: {problem}"
                )
            log.info("retrying %s %s (attempt %d): %s", method, path, failed, problem)
            time.sleep(min(0.5 * failed, 3))

    def create(self, tag: str, **spec) -> dict:
        body = {
            "name": spec.pop("name", tag),
            "framework": {"id": "python"},
            "resources": {"flavor": "ai1-1-cpu", "cpu": 1},
            "labels": {"lc": tag},
            **spec,
        }
        deadline = time.monotonic() + self.budget_s
        while True:
            try:
                r = self.http.post(self.base, json=body)
            except httpx.TransportError as err:
                r, problem = None, repr(err)
            else:
                if r.status_code == 201:
                    return r.json()
                assert r.status_code >= 500, f"create {tag}: expected 201, got {r.text}"
                problem = f"{r.status_code} {r.text[:300]}"
            # A create is not idempotent: one whose answer was lost may have started the
            # notebook; its label finds it.
            found, _ = self.request("GET", self.base, params={"label": f"lc={tag}"})
            if found.status_code == 200 and found.json():
                return found.json()[0]
            assert time.monotonic() < deadline, f"create {tag} kept failing: {problem}"
            self.retries += 1
            time.sleep(1)

    def get(self, nid: str) -> dict:
        r, _ = self.request("GET", f"{self.base}/{nid}")
        if r.status_code == 404:
            raise Gone(nid)
        assert r.status_code == 200, f"GET {nid}: expected 200, got {r.status_code} {r.text}"
        return r.json()

    def command(self, nid: str, verb: str, applied: set[str]) -> dict:
        """POST a command (DELETE for "delete"); 202 expected. After a failed attempt the
        command may have been applied already (its update was admitted before the answer
        was lost), so a 409 (404 for a delete) then passes if the state shows it was."""
        if verb == "delete":
            r, failed = self.request("DELETE", f"{self.base}/{nid}")
        else:
            r, failed = self.request("POST", f"{self.base}/{nid}/{verb}")
        if r.status_code == 202:
            return r.json()
        if failed and r.status_code in (404, 409):
            try:
                state = self.get(nid)["status"]["state"]
            except Gone:
                state = "DELETED"
            if state in applied:
                log.info("%s of %s was applied by an attempt whose answer was lost", verb, nid)
                return {"status": {"state": state}}
        raise AssertionError(
            f"{verb} {nid}: expected 202 (or, after {failed} failed attempts, a state in "
            f"{sorted(applied)}), got {r.status_code} {r.text}"
        )

    def wait(
        self,
        nid: str,
        *states: str,
        timeout: float = 180,
        fail_on: tuple[str, ...] = ("FAILED", "ERROR"),
        seen: list[str] | None = None,
    ) -> dict:
        """Poll until the notebook is in one of ``states`` ("DELETED": a 404)."""
        seen = [] if seen is None else seen
        deadline = time.monotonic() + timeout
        last: dict = {}
        while True:
            try:
                nb = self.get(nid)
            except Gone:
                nb = {"status": {"state": "DELETED"}}
            last = nb["status"]
            state = last["state"]
            label = f"{state}/{last.get('info', {}).get('code') or ''}"
            if not seen or seen[-1] != label:
                seen.append(label)
            stale = last.get("info", {}).get("code") == "STATUS_STALE"
            if state == "DELETED" and "DELETED" in states:
                return nb
            # A stale answer (no worker took the query) has no details: ask again.
            if state in states and not stale:
                return nb
            if state in fail_on and not stale:
                raise AssertionError(
                    f"{nid}: expected {states}, reached {state}; saw {seen}; status {last}\n"
                    + pending_activities(self.stack, self.project, nid)
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{nid}: expected {states} within {timeout:.0f}s; saw {seen}; last {last}\n"
                    + pending_activities(self.stack, self.project, nid)
                )
            time.sleep(0.3)


class Editor:
    """A notebook's JupyterLab through the gateway (its contents API), with the link's
    token; retries while the gateway cannot reach it (the host agent's tunnel is down)."""

    def __init__(self, nb: dict, budget_s: float = 120) -> None:
        url = nb["status"]["url"]
        assert url and "token=" in url, f"expected a status.url with a token, got {nb['status']}"
        base, _, query = url.partition("?")
        self.root = base.removesuffix("/lab")
        self.headers = {"Authorization": f"token {parse_qs(query)['token'][0]}"}
        self.budget_s = budget_s

    def _call(self, method: str, path: str, **kwargs) -> httpx.Response:
        def answered() -> httpx.Response:
            r = httpx.request(method, self.root + path, headers=self.headers, timeout=30, **kwargs)
            assert r.status_code < 500, f"{r.status_code} {r.text[:200]}"
            return r

        return eventually(
            answered,
            timeout=self.budget_s,
            interval=1,
            retry_on=(AssertionError, httpx.TransportError),
            what=f"{method} {path}: the editor to answer",
        )

    def write(self, path: str, content: str) -> None:
        parent = path.rpartition("/")[0]
        if parent:
            r = self._call("PUT", f"/api/contents/{parent}", json={"type": "directory"})
            assert r.status_code in (200, 201), f"mkdir {parent}: expected 200/201, got {r.text}"
        r = self._call(
            "PUT",
            f"/api/contents/{path}",
            json={"type": "file", "format": "text", "content": content},
        )
        assert r.status_code in (200, 201), f"write {path}: expected 200/201, got {r.text}"

    def read(self, path: str) -> str | None:
        """The file's text, or None if the editor has no such file."""
        r = self._call("GET", f"/api/contents/{path}", params={"content": "1", "format": "text"})
        if r.status_code == 404:
            return None
        assert r.status_code == 200, f"read {path}: expected 200, got {r.status_code} {r.text}"
        return r.json()["content"]


def saved_file(s3, project: str, nid: str, path: str) -> bytes | None:
    """A workspace file as object storage holds it, or None."""
    try:
        obj = s3.get_object(Bucket=WORKSPACE_BUCKET, Key=f"{workspace_prefix(project, nid)}/{path}")
    except s3.exceptions.NoSuchKey:
        return None
    except s3.exceptions.ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("NoSuchBucket", "404"):
            return None
        raise
    return obj["Body"].read()


def pending_activities(stack: Stack, project: str, nid: str) -> str:
    """What the workflow waits for (a stuck notebook's evidence): its pending activities
    with their attempt and the worker that last took them."""

    async def describe() -> str:
        client = await Client.connect(stack.temporal_address)
        desc = await client.get_workflow_handle(workflow_id(project, nid)).describe()
        lines = [f"workflow {desc.status.name if desc.status else '?'}"]
        for a in desc.raw_description.pending_activities:
            started = a.last_started_time.ToDatetime(tzinfo=UTC).strftime("%H:%M:%S.%f")
            lines.append(
                f"pending {a.activity_type.name}: attempt {a.attempt}, last started {started} "
                f"by {a.last_worker_identity or '?'}, heartbeat timeout "
                f"{a.heartbeat_timeout.ToSeconds() if a.HasField('heartbeat_timeout') else '-'}"
            )
        return "\n".join(lines)

    try:
        return asyncio.run(describe())
    except Exception as err:  # evidence only: never the reason a report is lost
        return f"(no description: {err!r})"


# ------------------------------------------------------------------- billing


def histories(stack: Stack, project: str, nids: list[str]) -> dict[str, list[WorkflowHistory]]:
    """Each notebook's workflow histories, oldest run first (a run that continued as new
    names the one before it in its first event)."""

    async def fetch() -> dict[str, list[WorkflowHistory]]:
        client = await Client.connect(stack.temporal_address)
        out: dict[str, list[WorkflowHistory]] = {}
        for nid in nids:
            wid = workflow_id(project, nid)
            runs = [await client.get_workflow_handle(wid).fetch_history()]
            while True:
                first = runs[0].events[0].workflow_execution_started_event_attributes
                if not first.continued_execution_run_id:
                    break
                handle = client.get_workflow_handle(wid, run_id=first.continued_execution_run_id)
                runs.insert(0, await handle.fetch_history())
            out[nid] = runs
        return out

    return asyncio.run(fetch())


def _state_of(fields) -> str | None:
    payload = fields.get("NotebookState")
    return json.loads(payload.data) if payload is not None and payload.data else None


def state_changes(runs: list[WorkflowHistory]) -> list[tuple[datetime, str]]:
    """Each transition as the history records it: an upsert of the NotebookState search
    attribute, at the workflow's time of the task that made it. That time is the task's
    WorkflowTaskStarted event (what workflow.now() returns; so too, checked, for a task
    retried after its worker was killed): the last such event before the upsert."""
    changes: list[tuple[datetime, str]] = []
    state: str | None = None
    now: datetime | None = None
    for run in runs:
        for event in run.events:
            kind = event.event_type
            if kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED and state is None:
                attrs = event.workflow_execution_started_event_attributes
                state = _state_of(attrs.search_attributes.indexed_fields)
                changes.append((event.event_time.ToDatetime(tzinfo=UTC), state or "?"))
            elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
                now = event.event_time.ToDatetime(tzinfo=UTC)
            elif kind == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
                attrs = event.upsert_workflow_search_attributes_event_attributes
                new = _state_of(attrs.search_attributes.indexed_fields)
                if new is not None and new != state:
                    assert now is not None
                    changes.append((now, new))
                    state = new
    return changes


def running_periods(runs: list[WorkflowHistory]) -> list[tuple[datetime, datetime | None]]:
    """RUNNING periods: from each transition to RUNNING to the next transition."""
    periods: list[tuple[datetime, datetime | None]] = []
    opened: datetime | None = None
    for at, state in state_changes(runs):
        if state == "RUNNING":
            opened = at
        elif opened is not None:
            periods.append((opened, at))
            opened = None
    if opened is not None:
        periods.append((opened, None))
    return periods


def transitions(runs: list[WorkflowHistory]) -> list[str]:
    """The events around each state change, for a report: what ran when."""
    out = []
    for run in runs:
        for event in run.events:
            kind = EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")
            at = event.event_time.ToDatetime(tzinfo=UTC).strftime("%H:%M:%S.%f")
            note = ""
            if event.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
                fields = event.upsert_workflow_search_attributes_event_attributes
                note = _state_of(fields.search_attributes.indexed_fields) or ""
            elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                note = event.activity_task_scheduled_event_attributes.activity_type.name
            elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
                attempt = event.workflow_task_scheduled_event_attributes.attempt
                note = f"attempt {attempt}" if attempt > 1 else ""
            elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
                note = event.workflow_task_started_event_attributes.identity
            elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
                note = str(event.workflow_task_failed_event_attributes.cause)
            out.append(f"{event.event_id} {at} {kind} {note}".rstrip())
    return out


def ceil_minutes(start: datetime, end: datetime) -> int:
    """ceil(seconds / 60) on whole microseconds (60.000000 s is one minute)."""
    us = round((end - start).total_seconds() * 1_000_000)
    return 0 if us <= 0 else -(-us // 60_000_000)


def ledger_rows(stack: Stack, project: str) -> list[dict]:
    """What the platform billed, read through the ledger's own store (SQLite or
    PostgreSQL, as the stack was configured), in notebook, period and seq order."""
    return [r.model_dump() for r in UsageLedger(stack.ledger).records(project)]


def _parse(ts: datetime | str) -> datetime:
    return ts if isinstance(ts, datetime) else datetime.fromisoformat(ts.replace("Z", "+00:00"))


@dataclass
class BillingCheck:
    nid: str
    expected: int  # from the history
    billed: int  # in the ledger
    periods: list[tuple[datetime, datetime | None]]
    problems: list[str] = field(default_factory=list)  # each a failure of I4
    # Where the ledger's periods begin or end elsewhere than the history's transitions
    # with the same minutes: evidence for a report, not a failure by itself.
    notes: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)  # the history, when it is evidence


def check_billing(stack: Stack, project: str, nids: list[str]) -> list[BillingCheck]:
    """Per notebook: the ledger's minutes against the history's RUNNING periods, each
    ceil(seconds / 60); and each period recorded once (seqs 1..n, one final record, its
    minutes adding up to its own span)."""
    by_nid: dict[str, list[dict]] = {}
    for row in ledger_rows(stack, project):
        by_nid.setdefault(row["notebook_id"], []).append(row)
    checks = []
    for nid, runs in histories(stack, project, nids).items():
        periods = running_periods(runs)
        rows = by_nid.get(nid, [])
        check = BillingCheck(
            nid,
            expected=sum(ceil_minutes(a, b) for a, b in periods if b is not None),
            billed=sum(r["minutes"] for r in rows),
            periods=periods,
        )
        if any(b is None for _, b in periods):
            check.problems.append("a RUNNING period is still open")
        if check.billed != check.expected:
            check.problems.append(f"billed {check.billed} min, history says {check.expected}")
        by_period: dict[int, list[dict]] = {}
        for r in rows:
            by_period.setdefault(r["period"], []).append(r)
        if len(by_period) != len(periods):
            check.problems.append(f"{len(by_period)} periods billed, {len(periods)} in history")
        for n, recs in sorted(by_period.items()):
            if [r["seq"] for r in recs] != list(range(1, len(recs) + 1)):
                check.problems.append(f"period {n}: seqs {[r['seq'] for r in recs]}")
            finals = [r for r in recs if r["final"]]
            if len(finals) != 1:
                check.problems.append(f"period {n}: {len(finals)} final records")
            elif sum(r["minutes"] for r in recs) != ceil_minutes(
                _parse(recs[0]["period_started_at"]), _parse(finals[0]["recorded_at"])
            ):
                check.problems.append(f"period {n}: minutes do not add up to its span: {recs}")
        for (start, end), (n, recs) in zip(periods, sorted(by_period.items()), strict=False):
            billed_start = _parse(recs[0]["period_started_at"])
            billed_end = _parse(recs[-1]["recorded_at"])
            if abs((billed_start - start).total_seconds()) > 0.001 or (
                end is not None and abs((billed_end - end).total_seconds()) > 0.001
            ):
                check.notes.append(
                    f"period {n}: history {start.isoformat()}..{end and end.isoformat()}, "
                    f"ledger {billed_start.isoformat()}..{billed_end.isoformat()}"
                )
        if check.problems or check.notes:
            check.events = transitions(runs)
        checks.append(check)
    return checks


# --------------------------------------------------------------------- chaos


@dataclass
class Chaos:
    """kill -9 of the control worker and the host agent at seeded random moments, each
    restarted after a short while; every step logged with its time."""

    stack: Stack
    rng: random.Random
    plan: list[str]
    gap_s: tuple[float, float] = (6.0, 18.0)
    down_s: tuple[float, float] = (0.5, 4.0)
    events: list[str] = field(default_factory=list)
    kills: int = 0  # completed kill-and-restart cycles
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    error: BaseException | None = None

    def _note(self, text: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {text}"
        self.events.append(line)
        log.warning("chaos: %s", text)

    def _run(self) -> None:
        starters: dict[str, Callable[[], None]] = {
            "control-worker": self.stack.start_control_worker,
            "host-agent": self.stack.start_host_agent,
        }
        try:
            for target in self.plan:
                gap = self.rng.uniform(*self.gap_s)
                if self._stop.wait(gap):
                    return
                names = list(starters) if target == "both" else [target]
                down = self.rng.uniform(*self.down_s)
                for name in names:
                    self.stack.kill(name)  # SIGKILL
                self._note(f"killed {'+'.join(names)} (after {gap:.1f}s); down {down:.1f}s")
                time.sleep(down)
                for name in names:
                    starters[name]()
                self._note(f"restarted {'+'.join(names)}")
                self.kills += 1
        except Exception as err:  # the test reads self.error
            self.error = err
            self._note(f"chaos failed: {err!r}")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="chaos", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=120)
