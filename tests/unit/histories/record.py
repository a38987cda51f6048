"""Record the histories of named scenarios, one per path of the notebook workflow (and,
from record_fleet.py, of the fleet workflow), on the time-skipping server with the fake
activities of the unit tests.

    PYTHONPATH=<checkout> python tests/unit/histories/record.py --scenario NAME OUT.json
    PYTHONPATH=<checkout> python tests/unit/histories/record.py --all OUTDIR [--label L]
    PYTHONPATH=<checkout> python tests/unit/histories/record.py --list

with the venv's bin on PATH (temporal-test-server). A release's histories, from a clean
checkout of it: ``--all tests/unit/histories``, then name any new scenario in
test_replay.py.

Run against an older checkout (a git worktree of a released commit), it gives histories
today's workflow code must replay (test_replay.py): a notebook running when the platform
is upgraded keeps running. Run it from the checkout's directory, so that nothing of this
tree is imported by mistake; it prints the checkout it recorded. ``--all`` writes
``<scenario>-<label>.json`` (label: the checkout's short commit, ``-dirty`` if it has
uncommitted changes outside tests/unit/histories/, where new scenarios are written before
they are recorded). A file is ``{"workflow_id": …, "runs": [history, …]}``: every run
of the workflow, first to last (more than one where it continued as new), each in
Temporal's JSON form of a history. The id matters: the workflow compares it with what a
grant signal names.

Written against the harness every version of the tests has: a scenario that needs a knob
an older checkout lacks is skipped with a message. What a fake cannot be told to do
(refuse capacity, fail the editor's readiness, fail the watch, hold a ledger write, fail
a push for good) is a recorder-side replacement of that one activity, by name, so old
checkouts record those paths too. Two scenarios (stop-racing-a-completion,
stop-during-usage-write) record defects of the workflow as it was: a fix must keep them
replaying. Fixed in a01fc8b (patches.STOP_WINS_RACES): on a checkout with the fix, they
fail unless the stop wins.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import json
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

import tests.unit.fakes
import workflows.notebook
from domain import activity_names as A
from domain import codes
from domain.billing import UsageRecord
from domain.fleet import Allocation, CapacityRequest, Decision
from domain.ids import CONTROL_TASK_QUEUE, host_task_queue
from domain.messages import (
    DataSyncRequest,
    DeleteRequest,
    LabelsRequest,
    LaunchInput,
    LaunchResult,
    NotebookInput,
    PatchRequest,
    ReadyInput,
    StartRequest,
    StopRequest,
    SyncResult,
    Tuning,
    VolumeSyncInput,
    WatchInput,
    WatchResult,
)
from domain.states import NotebookState as S
from domain.status import Notebook, NotebookStatus, SyncProgress, SyncState
from tests.unit.fakes import HOST, Script, fake_activities
from tests.unit.harness import Harness
from workflows.notebook import NotebookWorkflow

try:
    from temporal_client.connect import ensure_search_attributes
except ImportError:  # a checkout from before temporal_client/ (2026-12)
    from worker.connect import ensure_search_attributes  # type: ignore[no-redef]

CHECKOUT = Path(workflows.__file__).resolve().parents[1]
# The fakes and the workflow must come from the same checkout, or the recording mixes two.
if Path(tests.unit.fakes.__file__).resolve().parents[2] != CHECKOUT:
    raise SystemExit(f"tests.unit.fakes is {tests.unit.fakes.__file__}, not under {CHECKOUT}")


# ------------------------------------------------------------------ the stage


class Stage:
    """One notebook workflow on its own server: the control worker, the host worker
    (which a scenario may take away, as a dead host), the fakes' script. The control
    activities run on a worker of their own, beside the one for the workflow (and its
    local activities), so that a scenario can hold workflow tasks back while an activity
    completes (see stop-racing-a-completion)."""

    def __init__(
        self, env: WorkflowEnvironment, script: Script, overrides: tuple, *, sticky: bool = True
    ) -> None:
        self.env = env
        self.script = script
        # Held by a scenario's own activities until it lets them go (close lets every one
        # go, so that no activity outlives the recording).
        self.gates: dict[str, asyncio.Event] = collections.defaultdict(asyncio.Event)
        self.seen: list[Any] = []  # the inputs a scenario's own activities were given
        made = [fn for fn in (make(self) for make in overrides) if fn is not None]
        control, host = fake_activities(script)
        self._control = _replace(control, made)
        self._host = _replace(host, made)
        self.h = Harness(env.client, script)
        self._workers: dict[str, tuple[Worker, asyncio.Task]] = {}
        self.sticky = sticky

    async def _start(self, key: str, **kwargs: Any) -> None:
        worker = Worker(self.env.client, **kwargs)
        self._workers[key] = (worker, asyncio.create_task(worker.run()))

    async def _stop(self, key: str) -> None:
        worker, task = self._workers.pop(key)
        await worker.shutdown()
        await task

    async def open(self, *, host: bool) -> None:
        await self._start("activities", task_queue=CONTROL_TASK_QUEUE, activities=self._control)
        await self.workflows_up()
        if host:
            await self.host_up()

    async def workflows_up(self) -> None:
        await self._start(
            "control",
            task_queue=CONTROL_TASK_QUEUE,
            workflows=[NotebookWorkflow],
            activities=self._control,
            no_remote_activities=True,
            # No sticky queue: a workflow task left while this worker was held back would
            # wait on the queue of the worker gone.
            max_cached_workflows=1000 if self.sticky else 0,
        )

    async def workflows_down(self) -> None:
        """No workflow task is taken until workflows_up: what happens meanwhile reaches
        the workflow in one task."""
        await self._stop("control")

    async def host_up(self) -> None:
        await self._start("host", task_queue=host_task_queue(HOST), activities=self._host)

    async def host_down(self) -> None:
        """The host agent is gone: nobody picks up its task queue any more."""
        await self._stop("host")

    async def close(self) -> None:
        for gate in self.gates.values():
            gate.set()
        await self.h.close()
        for key in list(self._workers):
            await self._stop(key)

    # What a scenario says, in the harness's words.

    async def create(self, *, tuning: dict | None = None, **spec: Any) -> WorkflowHandle:
        return await self.h.create(tuning=_tuning(**(tuning or {})), **spec)

    async def reach(self, handle: WorkflowHandle, state: S, code: str | None = None) -> Notebook:
        """The state the path leads to, with its code: a recording that took another path
        must not be saved under this scenario's name."""
        nb = await self.h.reach(handle, state, limit_s=60)
        if code is not None and nb.status.info.code != code:
            raise AssertionError(f"reached {state} with {nb.status.info}, expected {code}")
        return nb

    async def until(
        self, handle: WorkflowHandle, what: str, test: Callable[[Notebook], bool]
    ) -> Notebook:
        deadline = time.monotonic() + 60
        while True:
            nb = await self.h.get(handle)
            if test(nb):
                return nb
            if time.monotonic() > deadline:
                raise AssertionError(f"never saw {what}: {nb.status.state} {nb.status.info}")
            await asyncio.sleep(0.05)

    async def calls(self, what: str, at_least: int) -> None:
        deadline = time.monotonic() + 30
        while self.script.calls[what] < at_least:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} never called {at_least} times: {self.script.calls}")
            await asyncio.sleep(0.02)

    async def quiet(
        self, handle: WorkflowHandle, busy: tuple[str, ...] = (), *, tasks: bool = True
    ) -> None:
        """Wait until the workflow waits on a timer or a condition: no workflow task under
        way, no activity pending but those named. A stop or delete that lands in the same
        workflow task as the completion of an activity the phase awaits does not end the
        phase (the SDK hands it the result, the cancel is lost): without this wait, a
        recording would take that path now and then instead of the scenario's. With
        ``tasks=False``, a workflow task may wait (for a worker held back)."""
        deadline = time.monotonic() + 30
        while True:
            desc = await handle.describe()
            pending = [a.activity_type.name for a in desc.raw_description.pending_activities]
            last = (await handle.fetch_history()).events[-1].event_type
            if all(p in busy for p in pending) and not (tasks and last in _TASK_UNDER_WAY):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"never quiet: pending {pending}, last event {last}")
            await asyncio.sleep(0.05)

    async def update(
        self, handle: WorkflowHandle, update: Any, req: Any, busy: tuple[str, ...] = ()
    ) -> Notebook:
        await self.quiet(handle, busy)
        return await handle.execute_update(update, req)

    async def stop(self, handle: WorkflowHandle, busy: tuple[str, ...] = ()) -> Notebook:
        return await self.update(handle, NotebookWorkflow.stop, StopRequest(), busy)

    async def delete(
        self, handle: WorkflowHandle, busy: tuple[str, ...] = (), **kwargs: Any
    ) -> Notebook:
        return await self.update(handle, NotebookWorkflow.delete, DeleteRequest(**kwargs), busy)

    async def datasync(
        self, handle: WorkflowHandle, req: DataSyncRequest, busy: tuple[str, ...] = ()
    ) -> str:
        nb = await self.update(handle, NotebookWorkflow.datasync, req, busy)
        return nb.status.datasyncs[-1].id

    async def settled(self, handle: WorkflowHandle, sync_id: str) -> str:
        def done(nb: Notebook) -> bool:
            return _job(nb, sync_id).state in ("done", "failed")

        return _job(await self.until(handle, f"datasync {sync_id} settled", done), sync_id).state


_TASK_UNDER_WAY = (
    EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED,
)


def _job(nb: Notebook, sync_id: str) -> Any:
    return next(d for d in nb.status.datasyncs if d.id == sync_id)


def _name(fn: Any) -> str:
    # The name the activity is registered under; the fakes share it with the real ones.
    return activity._Definition.must_from_callable(fn).name


def _replace(activities: list, overrides: list) -> list:
    by_name = {_name(fn): fn for fn in overrides}
    return [by_name.get(_name(fn), fn) for fn in activities]


def _tuning(**overrides: Any) -> Tuning:
    """The harness's tuning (quick timeouts), with a scenario's changes."""
    base = {"heartbeat_timeout_s": 5, "host_pickup_timeout_s": 5, "start_sync_attempts": 2}
    return Tuning(**{**base, **overrides})


# -------------------------------------------------------------- the scenarios


@dataclasses.dataclass
class Scenario:
    name: str
    run: Callable[[Stage], Awaitable[WorkflowHandle]]
    script: dict[str, Any]  # the Script it needs (its knobs)
    needs: tuple[str, ...]  # "Class.attribute" an older checkout may lack
    overrides: tuple[Callable[[Stage], Any], ...]  # recorder-side activities, made per run
    host: bool  # whether a host worker serves the notebook's host queue at the start
    sticky: bool  # whether the workflow worker caches workflows (see Stage.workflows_up)

    @property
    def doc(self) -> str:
        return (self.run.__doc__ or "").strip().splitlines()[0]


SCENARIOS: dict[str, Scenario] = {}


def scenario(
    name: str,
    *,
    script: dict[str, Any] | None = None,
    needs: tuple[str, ...] = (),
    overrides: tuple[Callable[[Stage], Any], ...] = (),
    host: bool = True,
    sticky: bool = True,
) -> Callable:
    def register(fn: Callable[[Stage], Awaitable[WorkflowHandle]]) -> Callable:
        knobs = tuple(f"Script.{k}" for k in (script or {}))
        SCENARIOS[name] = Scenario(name, fn, script or {}, knobs + needs, overrides, host, sticky)
        return fn

    return register


def missing(s: Scenario) -> list[str]:
    """What the scenario needs that this checkout does not have."""
    have = {
        "Script": {f.name for f in dataclasses.fields(Script)},
        "Tuning": set(Tuning.model_fields),
        "NotebookWorkflow": set(dir(NotebookWorkflow)),
        "NotebookInput": set(NotebookInput.model_fields),
        "NotebookStatus": set(NotebookStatus.model_fields),
        "DeleteRequest": set(DeleteRequest.model_fields),
        "VolumeSyncInput": set(VolumeSyncInput.model_fields),
    }
    return [n for n in s.needs if n.split(".", 1)[1] not in have[n.split(".", 1)[0]]]


@scenario("lifecycle", script={"instant_watch": True})
async def lifecycle(st: Stage) -> WorkflowHandle:
    """Created, RUNNING, patched, relabelled, a datasync, a token rotation (where the
    workflow has it), stopped, started again, deleted: the workflow completes."""
    handle = await st.create(labels={"team": "vision"})
    await st.reach(handle, S.RUNNING)
    await st.update(handle, NotebookWorkflow.patch, PatchRequest(timeout_auto_restart=True))
    await st.update(handle, NotebookWorkflow.set_labels, LabelsRequest(labels={"team": "nlp"}))
    await st.settled(handle, await st.datasync(handle, DataSyncRequest(direction="push")))
    if hasattr(NotebookWorkflow, "rotate_token"):  # since access control
        from domain.access import Actor, Role
        from domain.messages import RotateTokenRequest

        by = Actor(token_id="0123456789ab", name="recorder", role=Role.OPERATOR)
        await st.update(
            handle, NotebookWorkflow.rotate_token, RotateTokenRequest(by=by, reach={"team": "nlp"})
        )
        await st.update(handle, NotebookWorkflow.stop, StopRequest(by=by))
    else:
        await st.stop(handle)
    await st.reach(handle, S.STOPPED, codes.STOPPED_BY_USER)
    await st.update(handle, NotebookWorkflow.start, StartRequest())
    await st.reach(handle, S.RUNNING)
    await st.delete(handle)
    await handle.result()
    return handle


_UNREADABLE = [{"bucket": "missing-bucket", "alias": "local", "mount_path": "/workspace/x"}]
_UNREACHABLE = [{"bucket": "unreachable", "alias": "local", "mount_path": "/workspace/x"}]
_ONE_VOLUME = [{"bucket": "data-in", "alias": "local", "mount_path": "/workspace/in"}]


@scenario("start-volume-unreadable")
async def start_volume_unreadable(st: Stage) -> WorkflowHandle:
    """A user's volume cannot be read: FAILED DATA_SYNC_FAILED, nothing launched."""
    handle = await st.create(volumes=_UNREADABLE)
    await st.reach(handle, S.FAILED, codes.DATA_SYNC_FAILED)
    return handle


@scenario("start-storage-unavailable")
async def start_storage_unavailable(st: Stage) -> WorkflowHandle:
    """The platform's storage does not answer, after the start's retries: ERROR."""
    handle = await st.create(volumes=_UNREACHABLE)
    await st.reach(handle, S.ERROR, codes.STORAGE_UNAVAILABLE)
    return handle


@scenario("start-image-missing")
async def start_image_missing(st: Stage) -> WorkflowHandle:
    """The image is not on the host: ERROR IMAGE_NOT_FOUND, not retried."""
    handle = await st.create(image="missing-image")
    await st.reach(handle, S.ERROR, codes.IMAGE_NOT_FOUND)
    return handle


def _editor_never_ready(st: Stage) -> Any:
    @activity.defn(name=A.WAIT_EDITOR_READY)
    async def wait_editor_ready(inp: ReadyInput) -> None:
        raise ApplicationError(
            f"the editor did not answer within {inp.timeout_s:.0f}s",
            type=codes.EDITOR_NOT_READY,
            non_retryable=True,
        )

    return wait_editor_ready


def _launched_never_ready(st: Stage) -> Any:
    """The same for launch_editor (patches.LAUNCH_WAITS_READY), where it exists: the
    container is made, its editor never answers."""
    name = getattr(A, "LAUNCH_EDITOR", None)
    if name is None:
        return None

    @activity.defn(name=name)
    async def launch_editor(inp: LaunchInput) -> LaunchResult:
        st.script.calls["launch"] += 1
        st.script.container_running = True
        st.script.exited = asyncio.Event()
        raise ApplicationError(
            f"the editor did not answer within {inp.ready_timeout_s:.0f}s",
            type=codes.EDITOR_NOT_READY,
            non_retryable=True,
        )

    return launch_editor


@scenario("start-editor-not-ready", overrides=(_editor_never_ready, _launched_never_ready))
async def start_editor_not_ready(st: Stage) -> WorkflowHandle:
    """The container runs but the editor never answers: torn down (data pushed), ERROR."""
    handle = await st.create()
    await st.reach(handle, S.ERROR, codes.EDITOR_NOT_READY)
    return handle


def _refused(st: Stage) -> Any:
    @activity.defn(name=A.REQUEST_CAPACITY)
    async def request_capacity(req: CapacityRequest) -> Decision:
        return Decision(
            outcome="refused",
            code=codes.NO_CAPACITY,
            message=f"no host can ever fit {req.units} x {req.flavor}",
        )

    return request_capacity


@scenario("start-refused", overrides=(_refused,))
async def start_refused(st: Stage) -> WorkflowHandle:
    """The fleet refuses the capacity: FAILED NO_CAPACITY without touching a host."""
    handle = await st.create()
    await st.reach(handle, S.FAILED, codes.NO_CAPACITY)
    return handle


@scenario("editor-exit-0")
async def editor_exit_0(st: Stage) -> WorkflowHandle:
    """The editor exits 0 while watched: its data saved, STOPPED EXITED."""
    handle = await st.create()
    await st.reach(handle, S.RUNNING)
    await st.calls("watch", 1)
    st.script.editor_exits(0)
    await st.reach(handle, S.STOPPED, codes.EXITED)
    return handle


@scenario("editor-exit-nonzero")
async def editor_exit_nonzero(st: Stage) -> WorkflowHandle:
    """The editor exits 3 while watched: its data saved, FAILED EXIT_CODE_3."""
    handle = await st.create()
    await st.reach(handle, S.RUNNING)
    await st.calls("watch", 1)
    st.script.editor_exits(3)
    await st.reach(handle, S.FAILED, codes.exit_code(3))
    return handle


@scenario("timeout-auto-restart", script={"instant_watch": True})
async def timeout_auto_restart(st: Stage) -> WorkflowHandle:
    """RUNNING past its timeout: stopped (TIMEOUT), saved, restarted; then stopped."""
    handle = await st.create(timeout=600, timeout_auto_restart=True)
    first = await st.reach(handle, S.RUNNING)
    await st.env.sleep(timedelta(seconds=601))
    await st.until(
        handle,
        "the restart",
        lambda nb: (
            nb.status.state == S.RUNNING
            and nb.status.last_started_at != first.status.last_started_at
        ),
    )
    await st.stop(handle)
    await st.reach(handle, S.STOPPED, codes.STOPPED_BY_USER)
    return handle


# Below the events a start takes: the first chance to continue as new takes it.
_SHORT_HISTORY = {"max_history_events": 20}


@scenario(
    "continue-as-new-running",
    script={"instant_watch": True},
    needs=("Tuning.max_history_events",),
)
async def continue_as_new_running(st: Stage) -> WorkflowHandle:
    """RUNNING, continued as new after a watch (billing and run carried), then deleted."""
    handle = await st.create(tuning={**_SHORT_HISTORY, "checkpoint_s": 60})
    await st.reach(handle, S.RUNNING)
    await st.env.sleep(timedelta(seconds=61))
    await _continued(handle)
    await st.reach(handle, S.RUNNING)
    await st.delete(handle)
    await handle.result()
    return handle


@scenario(
    "continue-as-new-idle",
    script={"instant_watch": True},
    needs=("Tuning.max_history_events",),
)
async def continue_as_new_idle(st: Stage) -> WorkflowHandle:
    """STOPPED with a long history: continued as new while idle; started, then deleted."""
    handle = await st.create(tuning=_SHORT_HISTORY)
    await st.reach(handle, S.RUNNING)
    await st.stop(handle)
    await st.reach(handle, S.STOPPED)
    await _continued(handle)
    await st.update(handle, NotebookWorkflow.start, StartRequest())
    await st.reach(handle, S.RUNNING)
    await st.delete(handle)
    await handle.result()
    return handle


async def _continued(handle: WorkflowHandle) -> None:
    deadline = time.monotonic() + 30
    while (await handle.describe()).run_id == handle.first_execution_run_id:
        if time.monotonic() > deadline:
            raise AssertionError("the workflow never continued as new")
        await asyncio.sleep(0.05)


# A dead host is noticed after this long without a pickup (real seconds: the server does
# not skip time while an activity waits).
_QUICK_PICKUP = {"host_pickup_timeout_s": 2}


@scenario("host-lost-starting", host=False)
async def host_lost_starting(st: Stage) -> WorkflowHandle:
    """The granted host never picks up the pull: ERROR HOST_LOST while STARTING."""
    # One volume: two pulls timing out at once make the workflow cancel one the server has
    # already timed out, which the time-skipping server answers by failing the task.
    handle = await st.create(tuning=_QUICK_PICKUP, volumes=_ONE_VOLUME)
    await st.reach(handle, S.ERROR, codes.HOST_LOST)
    return handle


@scenario("host-lost-running", script={"instant_watch": True})
async def host_lost_running(st: Stage) -> WorkflowHandle:
    """The host dies while RUNNING (its next watch is never picked up): ERROR HOST_LOST;
    deleted from ERROR without the host."""
    handle = await st.create(tuning={**_QUICK_PICKUP, "checkpoint_s": 60})
    await st.reach(handle, S.RUNNING)
    await st.host_down()
    await st.env.sleep(timedelta(seconds=61))
    await st.reach(handle, S.ERROR, codes.HOST_LOST)
    await st.delete(handle)
    await handle.result()
    return handle


@scenario("host-lost-stopping", script={"instant_watch": True})
async def host_lost_stopping(st: Stage) -> WorkflowHandle:
    """The host dies, then the user stops: the teardown finds no host, ERROR HOST_LOST."""
    handle = await st.create(tuning=_QUICK_PICKUP)
    await st.reach(handle, S.RUNNING)
    await st.calls("watch", 1)
    await st.host_down()
    await st.stop(handle)
    await st.reach(handle, S.ERROR, codes.HOST_LOST)
    return handle


def _watch_fails(st: Stage) -> Any:
    @activity.defn(name=A.WATCH_CONTAINER)
    async def watch_container(inp: WatchInput) -> WatchResult:
        raise ApplicationError("the container engine does not answer", type="ENGINE_UNAVAILABLE")

    return watch_container


@scenario("watch-failing", overrides=(_watch_fails,))
async def watch_failing(st: Stage) -> WorkflowHandle:
    """The watch fails five times in a row (not a lost host): torn down, ERROR."""
    handle = await st.create()
    await st.reach(handle, S.ERROR, "ENGINE_UNAVAILABLE")
    return handle


@scenario("datasync-push-pull", script={"instant_watch": True})
async def datasync_push_pull(st: Stage) -> WorkflowHandle:
    """While RUNNING: a push of everything, then a pull of one volume; then stopped."""
    handle = await st.create()
    await st.reach(handle, S.RUNNING)
    push = await st.datasync(handle, DataSyncRequest(direction="push"))
    assert await st.settled(handle, push) == "done"
    pull = await st.datasync(handle, DataSyncRequest(direction="pull", volume="/workspace/in"))
    assert await st.settled(handle, pull) == "done"
    await st.stop(handle)
    await st.reach(handle, S.STOPPED)
    return handle


@scenario("datasync-pull-failed", script={"instant_watch": True, "pull_failures": 0})
async def datasync_pull_failed(st: Stage) -> WorkflowHandle:
    """A datasync pull fails (storage down, three attempts): the stop finishes that pull
    before it pushes the volume."""
    handle = await st.create()
    await st.reach(handle, S.RUNNING)
    st.script.pull_failures = 3
    pull = await st.datasync(handle, DataSyncRequest(direction="pull", volume="/workspace/out"))
    assert await st.settled(handle, pull) == "failed"
    await st.stop(handle)
    nb = await st.reach(handle, S.STOPPED)
    assert not nb.status.volumes[1].repull
    return handle


@scenario("datasync-interrupted-by-stop", script={"instant_watch": True, "block_pull": False})
async def datasync_interrupted_by_stop(st: Stage) -> WorkflowHandle:
    """A stop while a datasync pull runs and a push waits: the pull is cancelled, the push
    never runs, the stop finishes the pull and saves everything."""
    handle = await st.create()
    await st.reach(handle, S.RUNNING)
    st.script.block_pull = True
    pulls = st.script.calls["pull_volume"]
    pull = await st.datasync(handle, DataSyncRequest(direction="pull", volume="/workspace/out"))
    await st.calls("pull_volume", pulls + 1)
    push = await st.datasync(handle, DataSyncRequest(direction="push"), busy=("pull_volume",))
    await st.stop(handle, busy=("pull_volume",))
    await st.until(handle, "the pull cancelled", lambda nb: _job(nb, pull).state == "failed")
    st.script.block_pull = False  # the stop's own pull of that volume may finish
    nb = await st.reach(handle, S.STOPPED, codes.STOPPED_BY_USER)
    assert _job(nb, push).state == "failed" and _job(nb, push).started_at is None
    return handle


@scenario(
    "workspace-checkpoint",
    script={"instant_watch": True},
    needs=("Tuning.workspace_checkpoint_s",),
)
async def workspace_checkpoint(st: Stage) -> WorkflowHandle:
    """RUNNING long enough for a periodic workspace checkpoint; then stopped."""
    handle = await st.create(tuning={"checkpoint_s": 300, "workspace_checkpoint_s": 600})
    await st.reach(handle, S.RUNNING)
    await st.env.sleep(timedelta(seconds=610))
    await st.until(handle, "a checkpoint", lambda nb: nb.status.workspace.saved)
    await st.stop(handle)
    await st.reach(handle, S.STOPPED)
    return handle


def _grant(handle: WorkflowHandle) -> Allocation:
    return Allocation(
        notebook=handle.id,
        project="p",
        host=HOST,
        task_queue=host_task_queue(HOST),
        flavor="ai1-1-cpu",
        units=1,
        cpus=1,
        memory_gib=4,
        granted_at=datetime.now(UTC),
    )


def _queued(nb: Notebook) -> bool:
    return nb.status.info.code == "QUEUED"


@scenario("queued-then-granted", script={"instant_watch": True, "queue_requests": True})
async def queued_then_granted(st: Stage) -> WorkflowHandle:
    """The fleet queues the start; its grant (a signal) starts it; then stopped."""
    handle = await st.create()
    await st.until(handle, "queued", _queued)
    await handle.signal("capacity_granted", _grant(handle))
    await st.reach(handle, S.RUNNING)
    await st.stop(handle)
    await st.reach(handle, S.STOPPED)
    return handle


@scenario("queued-then-stopped", script={"queue_requests": True})
async def queued_then_stopped(st: Stage) -> WorkflowHandle:
    """Stopped while waiting in the fleet's queue: its place given back, STOPPED."""
    handle = await st.create()
    await st.until(handle, "queued", _queued)
    await st.stop(handle)
    await st.reach(handle, S.STOPPED)
    return handle


@scenario("stop-while-starting", script={"block_pull": True})
async def stop_while_starting(st: Stage) -> WorkflowHandle:
    """Stopped while the start pulls: the pulls cancelled, nothing pushed, STOPPED."""
    handle = await st.create()
    await asyncio.wait_for(st.script.pull_started.wait(), 30)
    await st.stop(handle, busy=("pull_volume",))
    await st.reach(handle, S.STOPPED, codes.STOPPED_BY_USER)
    return handle


@scenario("delete-while-starting", script={"block_pull": True})
async def delete_while_starting(st: Stage) -> WorkflowHandle:
    """Deleted while the start pulls: the pulls cancelled, the workflow completes."""
    handle = await st.create()
    await asyncio.wait_for(st.script.pull_started.wait(), 30)
    await st.delete(handle, busy=("pull_volume",))
    await handle.result()
    return handle


@scenario("delete-while-stopping", script={"instant_watch": True, "block_push": None})
async def delete_while_stopping(st: Stage) -> WorkflowHandle:
    """Deleted while the stop pushes: DELETING once stopped, the workflow completes."""
    st.script.block_push = asyncio.Event()
    handle = await st.create()
    await st.reach(handle, S.RUNNING)
    pushes = st.script.calls["push_volume:/workspace/out"]
    await st.stop(handle)
    await st.calls("push_volume:/workspace/out", pushes + 1)
    nb = await st.delete(handle, busy=("push_volume",))
    assert nb.status.state == S.STOPPING
    st.script.block_push.set()
    await handle.result()
    return handle


@scenario("delete-keep-workspace", script={"instant_watch": True})
async def delete_keep_workspace(st: Stage) -> WorkflowHandle:
    """Deleted while RUNNING, keeping the workspace: pushed, not deleted; completes."""
    handle = await st.create()
    await st.reach(handle, S.RUNNING)
    await st.delete(handle, keep_workspace=True)
    await handle.result()
    return handle


@scenario("push-retrying", script={"instant_watch": True, "push_failures": 3})
async def push_retrying(st: Stage) -> WorkflowHandle:
    """The stop's push fails (storage down): SYNC_RETRYING, then saved, STOPPED."""
    handle = await st.create(volumes=[])
    await st.reach(handle, S.RUNNING)
    await st.stop(handle)
    await st.until(handle, "SYNC_RETRYING", lambda nb: nb.status.info.code == "SYNC_RETRYING")
    await st.reach(handle, S.STOPPED, codes.STOPPED_BY_USER)
    return handle


def _ledger_held(st: Stage) -> Any:
    @activity.defn(name=A.RECORD_USAGE)
    async def record_usage(record: UsageRecord) -> bool:
        st.seen.append(record)
        await st.gates["ledger"].wait()
        return True

    return record_usage


def _watch_held(st: Stage) -> Any:
    """The first watch of the RUNNING phase answers "still running" when the scenario sets
    the "watch" gate (heartbeating meanwhile); every later one at once."""

    @activity.defn(name=A.WATCH_CONTAINER)
    async def watch_container(inp: WatchInput) -> WatchResult:
        while not st.gates["watch"].is_set():
            activity.heartbeat()
            try:
                await asyncio.wait_for(st.gates["watch"].wait(), 0.5)
            except TimeoutError:
                pass
        return WatchResult(running=True)

    return watch_container


@scenario(
    "stop-racing-a-completion",
    script={"instant_watch": True},
    overrides=(_watch_held,),
    sticky=False,
)
async def stop_racing_a_completion(st: Stage) -> WorkflowHandle:
    """A stop that reaches the workflow in one task with the completion of an activity
    the RUNNING phase awaits; then time passes the timeout.

    Up to 911a019 at least, the phase is handed the activity's result and the cancel is
    lost: the notebook stays STOPPING, its container watched, until its timeout stops it
    (TIMEOUT, not STOPPED_BY_USER). A fix changes the commands that follow such a stop,
    so it must keep this history replaying (workflow.patched). Since a01fc8b
    (patches.STOP_WINS_RACES) the stop ends the phase: STOPPED STOPPED_BY_USER. Up to
    edd1938 the completion was the usage write's (an activity on the control task queue);
    since patches.USAGE_LOCAL that write is a local activity, so the watch's is."""
    handle = await st.create(timeout=600)
    await st.reach(handle, S.RUNNING)
    await st.quiet(handle, busy=(A.WATCH_CONTAINER,))
    await st.workflows_down()
    st.gates["watch"].set()
    await st.quiet(handle, tasks=False)
    stopping = asyncio.create_task(handle.execute_update(NotebookWorkflow.stop, StopRequest()))
    await asyncio.sleep(1)  # the Update reaches the server before a worker takes the task
    await st.workflows_up()
    await stopping
    await st.env.sleep(timedelta(seconds=601))
    nb = await st.reach(handle, S.STOPPED)
    print(f"  stop-racing-a-completion: STOPPED {nb.status.info.code}", file=sys.stderr)
    if _stop_wins() and nb.status.info.code != codes.STOPPED_BY_USER:
        raise AssertionError(f"the stop lost the race: STOPPED {nb.status.info}")
    return handle


@scenario("stop-during-usage-write", script={"instant_watch": True}, overrides=(_ledger_held,))
async def stop_during_usage_write(st: Stage) -> WorkflowHandle:
    """A stop while the RUNNING phase writes usage to the ledger (the write held).

    Up to 911a019 at least, the cancelled write's ActivityError escapes the phase and the
    workflow FAILS: closed, its status frozen at STOPPING, the container left running.
    Recorded so that a fix keeps replaying what such a closed workflow answers to queries
    (and to whatever revives it). Since a01fc8b (patches.STOP_WINS_RACES) the write is
    cancelled with the phase: STOPPED STOPPED_BY_USER, the workflow running on. Since
    patches.USAGE_LOCAL the write is a local activity, inside a workflow task: the stop
    reaches the workflow when the SDK heartbeats that task (most of its timeout later)."""
    handle = await st.create()
    await st.reach(handle, S.RUNNING)
    if _usage_local():
        deadline = time.monotonic() + 30
        while not any(isinstance(x, UsageRecord) for x in st.seen):
            assert time.monotonic() < deadline, "the usage write never began"
            await asyncio.sleep(0.05)
        await handle.execute_update(NotebookWorkflow.stop, StopRequest())
    else:
        await st.quiet(handle, busy=(A.RECORD_USAGE,))
        await st.stop(handle, busy=(A.RECORD_USAGE,))
    st.gates["ledger"].set()
    deadline = time.monotonic() + 30
    while True:
        desc = await handle.describe()
        if desc.status != WorkflowExecutionStatus.RUNNING:
            outcome = f"the workflow {desc.status.name}"
            break
        nb = await st.h.get(handle)
        if nb.status.state == S.STOPPED:
            outcome = f"STOPPED {nb.status.info.code}"
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"neither stopped nor closed: {nb.status.state}")
        await asyncio.sleep(0.05)
    print(f"  stop-during-usage-write: {outcome}", file=sys.stderr)
    if _stop_wins() and outcome != f"STOPPED {codes.STOPPED_BY_USER}":
        raise AssertionError(f"the stop during the usage write ended {outcome}")
    return handle


def _ledger_down(st: Stage) -> Any:
    """Usage writes fail (retryably) until the scenario sets the "ledger-up" gate."""

    @activity.defn(name=A.RECORD_USAGE)
    async def record_usage(record: UsageRecord) -> bool:
        if not st.gates["ledger-up"].is_set():
            raise ApplicationError("the ledger does not answer", type="LEDGER_UNAVAILABLE")
        return True

    return record_usage


@scenario(
    "ledger-down",
    script={"instant_watch": True},
    needs=("Tuning.local_ledger_attempts",),
    overrides=(_ledger_down,),
)
async def ledger_down(st: Stage) -> WorkflowHandle:
    """The ledger does not answer the RUNNING phase's usage write: since patches.USAGE_LOCAL
    the write is a local activity for a few tries, then waits on the control task queue
    until the ledger is back; then stopped. Before, the queued write just retried."""
    handle = await st.create(tuning={"local_ledger_attempts": 2})
    await st.reach(handle, S.RUNNING)
    deadline = time.monotonic() + 30
    while not await _queued_write(handle):
        assert time.monotonic() < deadline, "the usage write never went to the task queue"
        await asyncio.sleep(0.05)
    st.gates["ledger-up"].set()
    await st.quiet(handle)
    await st.stop(handle)
    await st.reach(handle, S.STOPPED, codes.STOPPED_BY_USER)
    return handle


async def _queued_write(handle: WorkflowHandle) -> bool:
    return any(
        e.activity_task_scheduled_event_attributes.activity_type.name == A.RECORD_USAGE
        for e in (await handle.fetch_history()).events
        if e.HasField("activity_task_scheduled_event_attributes")
    )


def _usage_local() -> bool:
    patches = getattr(workflows.notebook, "patches", None)
    return hasattr(patches, "USAGE_LOCAL")


def _stop_wins() -> bool:
    """Whether this checkout's workflow has the fix of the two races above. Asked of the
    module the workflow imported: ``import workflows.patches`` may find this tree's file
    (the venv's editable install) when the checkout has none."""
    patches = getattr(workflows.notebook, "patches", None)
    return hasattr(patches, "STOP_WINS_RACES")


# -------------------------------------- nothing stuck, orphaned or lost (since a01fc8b)


def _volume_pushes(*, fail: bool) -> Callable[[Stage], Any]:
    """The volumes' push, each input kept in ``st.seen``; with ``fail``, every push fails
    for a reason retries cannot fix (DATA_SYNC_FAILED, saying what it left) until the
    scenario sets the "storage-fixed" gate."""

    def make(st: Stage) -> Any:
        @activity.defn(name=A.PUSH_VOLUME)
        async def push_volume(inp: VolumeSyncInput) -> SyncResult:
            st.seen.append(inp)
            what = f"push_volume:{inp.volume.mount_path}"
            st.script.calls[what] += 1
            if fail and not st.gates["storage-fixed"].is_set():
                raise ApplicationError(
                    f"volume {inp.volume.mount_path}: a file cannot be written",
                    {"path": "/x", "files": 1, "bytes": 5},
                    type=codes.DATA_SYNC_FAILED,
                    non_retryable=True,
                )
            st.script.pushed.append(what)
            now = datetime.now(UTC)
            progress = SyncProgress(
                direction="push", state=SyncState.DONE, started_at=now, ended_at=now
            )
            return SyncResult(progress=progress)

        return push_volume

    return make


_KEEPS_DATA = ("NotebookStatus.left_on_host", "DeleteRequest.force")


async def _sync_failed(st: Stage) -> WorkflowHandle:
    """RUNNING, then a stop whose push of the rw volume fails for good: FAILED
    SYNC_FAILED, the volume listed as left on the host."""
    handle = await st.create()
    await st.reach(handle, S.RUNNING)
    await st.stop(handle)
    nb = await st.reach(handle, S.FAILED, codes.SYNC_FAILED)
    left = nb.status.left_on_host
    assert left is not None and [i.target for i in left.items] == ["/workspace/out"], left
    assert (left.items[0].files, left.items[0].bytes) == (1, 5), left
    return handle


@scenario(
    "sync-failed-then-datasync",
    script={"instant_watch": True},
    needs=_KEEPS_DATA,
    overrides=(_volume_pushes(fail=True),),
)
async def sync_failed_then_datasync(st: Stage) -> WorkflowHandle:
    """A stop's push fails for good: FAILED SYNC_FAILED, the data kept on the host; once
    storage takes it, a datasync push saves it: STOPPED."""
    handle = await _sync_failed(st)
    st.gates["storage-fixed"].set()
    await st.update(handle, NotebookWorkflow.datasync, DataSyncRequest(direction="push"))
    nb = await st.reach(handle, S.STOPPED, codes.STOPPED_BY_USER)
    assert nb.status.left_on_host is None
    assert st.seen[-1].keep_remote, st.seen[-1]
    return handle


@scenario(
    "sync-failed-force-delete",
    script={"instant_watch": True},
    needs=_KEEPS_DATA,
    overrides=(_volume_pushes(fail=True),),
)
async def sync_failed_force_delete(st: Stage) -> WorkflowHandle:
    """A stop's push fails for good: FAILED SYNC_FAILED; DELETE ?force=true drops what
    it left: the workflow completes."""
    handle = await _sync_failed(st)
    pushes = len(st.seen)
    await st.delete(handle, force=True)
    nb = await handle.result()
    assert nb.status.state == S.DELETED and "dropped" in nb.status.info.message, nb.status
    assert len(st.seen) == pushes  # dropped, not pushed again
    return handle


@scenario(
    "sync-failed-delete-refused",
    script={"instant_watch": True},
    needs=_KEEPS_DATA,
    overrides=(_volume_pushes(fail=True),),
)
async def sync_failed_delete_refused(st: Stage) -> WorkflowHandle:
    """A stop's push fails for good: FAILED SYNC_FAILED; a delete without force tries
    again, fails again: FAILED SYNC_FAILED, not deleted; then forced: completes."""
    handle = await _sync_failed(st)
    pushes = len(st.seen)
    await st.delete(handle)
    nb = await st.reach(handle, S.FAILED, codes.SYNC_FAILED)
    assert len(st.seen) > pushes and nb.status.left_on_host is not None
    await st.delete(handle, force=True)
    nb = await handle.result()
    assert nb.status.state == S.DELETED, nb.status
    return handle


@scenario(
    "host-lost-then-start-saves-leftovers",
    script={"instant_watch": True},
    needs=_KEEPS_DATA,
    overrides=(_volume_pushes(fail=False),),
)
async def host_lost_then_start_saves_leftovers(st: Stage) -> WorkflowHandle:
    """The host dies while RUNNING: ERROR HOST_LOST, what it holds listed (unknown); the
    host comes back and a start first pushes that (keeping remote files), then RUNNING;
    stopped, deleted."""
    handle = await st.create(tuning={**_QUICK_PICKUP, "checkpoint_s": 60})
    await st.reach(handle, S.RUNNING)
    await st.host_down()
    await st.env.sleep(timedelta(seconds=61))
    nb = await st.reach(handle, S.ERROR, codes.HOST_LOST)
    left = nb.status.left_on_host
    assert left is not None and left.host == HOST and not left.items, left
    await st.host_up()
    removals = st.script.calls["remove_local_data"]
    await st.update(handle, NotebookWorkflow.start, StartRequest())
    nb = await st.reach(handle, S.RUNNING)
    assert nb.status.left_on_host is None
    assert [i.keep_remote for i in st.seen] == [True], st.seen
    assert st.script.calls["remove_local_data"] == removals + 1
    await st.stop(handle)
    await st.reach(handle, S.STOPPED, codes.STOPPED_BY_USER)
    await st.delete(handle)
    await handle.result()
    return handle


@scenario(
    "delete-pushes-preserved",
    script={"instant_watch": True},
    needs=("VolumeSyncInput.preserved",),
    overrides=(_volume_pushes(fail=False),),
)
async def delete_pushes_preserved(st: Stage) -> WorkflowHandle:
    """Deleted while RUNNING, dropping the workspace: the rw volume is pushed, then its
    preserved files (.ainb-preserved/) to its own storage; the workflow completes."""
    handle = await st.create()
    await st.reach(handle, S.RUNNING)
    await st.delete(handle)
    await handle.result()
    assert [(i.volume.mount_path, i.preserved) for i in st.seen] == [
        ("/workspace/out", False),
        ("/workspace/out", True),
    ], st.seen
    return handle


@scenario("closed-taken-over", script={"instant_watch": True}, needs=("NotebookInput.closed",))
async def closed_taken_over(st: Stage) -> WorkflowHandle:
    """RUNNING when its workflow is terminated from outside: the run that takes over
    (temporal_client/revival.py, from the closed run's ``carry``) saves and removes what it left,
    ERROR WORKFLOW_CLOSED; then deleted. The new run's history is the one recorded."""
    try:
        from temporal_client.revival import take_over
    except ImportError:  # a checkout from before temporal_client/ (2026-12)
        from worker.revival import take_over  # type: ignore[no-redef]

    handle = await st.create()
    await st.reach(handle, S.RUNNING)
    await st.quiet(handle)
    await handle.terminate("closed from outside the platform (the recorder)")
    pushes = len(st.script.pushed)
    _, project, notebook_id = handle.id.split("/")
    assert await take_over(st.env.client, project, notebook_id), "no run took over"
    new = (await st.env.client.get_workflow_handle(handle.id).describe()).run_id
    run = st.env.client.get_workflow_handle(handle.id, run_id=new, first_execution_run_id=new)
    nb = await st.reach(run, S.ERROR, codes.WORKFLOW_CLOSED)
    assert nb.status.container is None and len(st.script.pushed) > pushes, nb.status
    await st.delete(run)
    await run.result()
    return run


# ---------------------------------------------------------------- recording


async def _server() -> WorkflowEnvironment:
    path = shutil.which("temporal-test-server")
    if not path:
        raise SystemExit("temporal-test-server is not on PATH: run with the venv's bin on PATH")
    return await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=path, data_converter=pydantic_data_converter
    )


async def document(client: Client, handle: WorkflowHandle) -> dict:
    """The workflow's id and every run of it, first to last (the continue-as-new chain),
    each once nothing more is under way in it (no workflow task half done)."""
    runs = []
    run_id = handle.first_execution_run_id or handle.result_run_id
    while run_id:
        run = client.get_workflow_handle(handle.id, run_id=run_id)
        for _ in range(100):
            history = await run.fetch_history()
            if history.events[-1].event_type not in (
                EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED,
                EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED,
            ):
                break
            await asyncio.sleep(0.05)
        runs.append(json.loads(history.to_json()))
        last = history.events[-1]
        run_id = (
            last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
            if last.HasField("workflow_execution_continued_as_new_event_attributes")
            else None
        )
    return {"workflow_id": handle.id, "runs": runs}


async def record_notebook(s: Scenario) -> dict:
    async with await _server() as env:
        await ensure_search_attributes(env.client)
        script = Script(**s.script)
        st = Stage(env, script, s.overrides, sticky=s.sticky)
        await st.open(host=s.host)
        try:
            handle = await s.run(st)
            return await document(env.client, handle)
        finally:
            await st.close()


def _fleet() -> Any:
    """The fleet's scenarios, or why this checkout has none."""
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        import record_fleet
    except ImportError as err:  # a checkout from before the fleet
        return f"no fleet workflow here ({err})"
    return record_fleet


def all_scenarios() -> dict[str, Any]:
    """Every scenario by name; a string stands for those this checkout cannot record."""
    fleet = _fleet()
    return {**SCENARIOS, **({"fleet-*": fleet} if isinstance(fleet, str) else fleet.SCENARIOS)}


async def record(name: str) -> dict | str:
    """A scenario's document (see write), or why it cannot be recorded here."""
    scenarios = all_scenarios()
    s = scenarios.get(name)
    if s is None:
        raise SystemExit(f"no scenario {name!r}; --list shows them")
    if isinstance(s, str):
        return s
    if isinstance(s, Scenario):
        lacking = missing(s)
        if lacking:
            return f"this checkout lacks {', '.join(lacking)}"
        return await record_notebook(s)
    lacking = s.missing()
    if lacking:
        return f"this checkout lacks {', '.join(lacking)}"
    async with await _server() as env:
        return await s.record(env, document)


def write(path: Path, doc: dict) -> None:
    # Compact: these files are committed, and the indentation is a fifth of their size.
    path.write_text(json.dumps(doc, separators=(",", ":")) + "\n")


def label() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(CHECKOUT), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    # The recorder's own folder aside: adding a scenario does not change the workflow.
    dirty = git(
        "status", "--porcelain", "--untracked-files=no", "--", ".", ":!tests/unit/histories"
    )
    return git("rev-parse", "--short=7", "HEAD") + ("-dirty" if dirty else "")


async def amain(args: argparse.Namespace) -> int:
    # The fakes fail activities on purpose: their tracebacks would bury what matters.
    logging.getLogger("temporalio.activity").setLevel(logging.ERROR)
    print(f"recording the workflows of {CHECKOUT}", file=sys.stderr)
    if args.scenario:
        names, out = [args.scenario], None
    else:
        names = list(all_scenarios())
        out = Path(args.all)
        out.mkdir(parents=True, exist_ok=True)
    tag = args.label or (label() if out else "")
    failed = 0
    for name in names:
        started = time.monotonic()
        try:
            doc = await record(name)
        except Exception as err:  # one broken scenario must not lose the others
            print(f"FAILED {name}: {type(err).__name__}: {err}", file=sys.stderr)
            failed += 1
            continue
        if isinstance(doc, str):
            print(f"skipped {name}: {doc}", file=sys.stderr)
            continue
        path = out / f"{name}-{tag}.json" if out else Path(args.out)
        write(path, doc)
        events = sum(len(r["events"]) for r in doc["runs"])
        print(
            f"recorded {name}: {len(doc['runs'])} run(s), {events} events, "
            f"{path.stat().st_size // 1024} KiB, {time.monotonic() - started:.1f}s -> {path}",
            file=sys.stderr,
        )
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--scenario", help="record one scenario into OUT")
    mode.add_argument("--all", metavar="OUTDIR", help="record every scenario into OUTDIR")
    mode.add_argument("--list", action="store_true", help="list the scenarios")
    parser.add_argument("out", nargs="?", help="the file --scenario writes")
    parser.add_argument("--label", help="with --all: the version label of the file names")
    args = parser.parse_args()
    if args.list:
        for name, s in all_scenarios().items():
            print(f"{name:32} {s if isinstance(s, str) else s.doc}")
        return
    if not args.all:
        if not args.out:
            parser.error("OUT is needed (or --all OUTDIR)")
        # Without --scenario: the one path this recorder used to record.
        args.scenario = args.scenario or "lifecycle"
    sys.exit(asyncio.run(amain(args)))


if __name__ == "__main__":
    main()
