"""Fake activities for the state-machine tests: same names and types as the real ones,
behaviour steered by the test through a shared :class:`Script`."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

from temporalio import activity
from temporalio.exceptions import ApplicationError

from domain import activity_names as A
from domain import codes
from domain.billing import UsageRecord
from domain.fleet import Allocation, CapacityRequest, Decision
from domain.ids import host_task_queue
from domain.messages import (
    DeleteWorkspaceInput,
    LaunchInput,
    LaunchResult,
    NotebookRef,
    ReadyInput,
    StopContainerInput,
    StopContainerResult,
    SyncResult,
    VolumeSyncInput,
    WatchInput,
    WatchResult,
    WorkspaceSyncInput,
)
from domain.status import SyncProgress, SyncState

HOST = "fake"


@dataclass
class Script:
    """What the fakes do, and what they saw."""

    calls: Counter = field(default_factory=Counter)
    pushed: list[str] = field(default_factory=list)
    # Set to make the next start's pull block until cancelled.
    block_pull: bool = False
    # Heartbeat details of a blocked pull (what a real sync reports as it goes).
    pull_details: dict | None = None
    pull_started: asyncio.Event = field(default_factory=asyncio.Event)
    push_failures: int = 0  # this many push attempts fail with STORAGE_UNAVAILABLE
    pull_failures: int = 0  # the same, for pulls
    block_push: asyncio.Event | None = None
    container_running: bool = False
    exit_code: int | None = None  # set while running: the editor exits with it
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    # The watch answers "still running" at once instead of after max_s (real) seconds:
    # time-skipping tests need no activity in flight while the server skips time.
    instant_watch: bool = False
    ledger: dict[str, UsageRecord] = field(default_factory=dict)
    held: set[str] = field(default_factory=set)  # notebooks holding fake capacity
    queue_requests: bool = False  # the fleet answers "queued" (the test grants by signal)
    ledger_writes: int = 0
    ledger_down: bool = False  # every usage write fails (retryably) while set

    def billed(self, notebook_id: str | None = None) -> int:
        return sum(r.minutes for r in self.ledger.values() if notebook_id in (None, r.notebook_id))

    def editor_exits(self, code: int) -> None:
        self.exit_code = code
        self.exited.set()


def _done(direction: str) -> SyncResult:
    now = datetime.now(UTC)
    return SyncResult(
        progress=SyncProgress(
            direction=direction, state=SyncState.DONE, started_at=now, ended_at=now
        )
    )


def fake_activities(script: Script) -> tuple[list, list]:
    """(control activities, host activities)."""

    @activity.defn(name=A.REQUEST_CAPACITY)
    async def request_capacity(req: CapacityRequest) -> Decision:
        script.calls["place"] += 1
        script.held.add(req.notebook)
        if script.queue_requests:
            return Decision(outcome="queued", position=3, waiting_for=f"{req.units} x {req.flavor}")
        return Decision(
            outcome="granted",
            allocation=Allocation(
                notebook=req.notebook,
                project=req.project,
                host=HOST,
                task_queue=host_task_queue(HOST),
                flavor=req.flavor,
                units=req.units,
                cpus=req.units,
                memory_gib=4 * req.units,
                granted_at=datetime.now(UTC),
            ),
        )

    @activity.defn(name=A.RELEASE_CAPACITY)
    async def release_capacity(notebook: str) -> bool:
        script.calls["release"] += 1
        had = notebook in script.held
        script.held.discard(notebook)
        return had

    @activity.defn(name=A.DELETE_WORKSPACE)
    async def delete_workspace(inp: DeleteWorkspaceInput) -> int:
        script.calls["delete_workspace"] += 1
        return 0

    async def _pull(what: str) -> SyncResult:
        script.calls[what] += 1
        script.pull_started.set()
        if script.pull_failures > 0:
            script.pull_failures -= 1
            raise ApplicationError("storage does not answer", type=codes.STORAGE_UNAVAILABLE)
        if script.block_pull:
            while script.block_pull:  # until the workflow cancels us, or the test lets go
                if script.pull_details is not None:
                    activity.heartbeat(script.pull_details)
                else:
                    activity.heartbeat()
                await asyncio.sleep(0.1)
        return _done("pull")

    @activity.defn(name=A.PULL_VOLUME)
    async def pull_volume(inp: VolumeSyncInput) -> SyncResult:
        if inp.volume.bucket == "missing-bucket":
            raise ApplicationError(
                f"volume {inp.volume.mount_path}: bucket {inp.volume.bucket} does not exist",
                type=codes.DATA_SYNC_FAILED,
                non_retryable=True,
            )
        if inp.volume.bucket == "unreachable":
            raise ApplicationError("storage does not answer", type=codes.STORAGE_UNAVAILABLE)
        return await _pull("pull_volume")

    @activity.defn(name=A.RESTORE_WORKSPACE)
    async def restore_workspace(inp: WorkspaceSyncInput) -> SyncResult:
        return await _pull("restore_workspace")

    async def _push(what: str) -> SyncResult:
        script.calls[what] += 1
        if script.block_push is not None:
            await script.block_push.wait()
        if script.push_failures > 0:
            script.push_failures -= 1
            raise ApplicationError("storage does not answer", type=codes.STORAGE_UNAVAILABLE)
        script.pushed.append(what)
        return _done("push")

    @activity.defn(name=A.PUSH_VOLUME)
    async def push_volume(inp: VolumeSyncInput) -> SyncResult:
        return await _push(f"push_volume:{inp.volume.mount_path}")

    @activity.defn(name=A.SAVE_WORKSPACE)
    async def save_workspace(inp: WorkspaceSyncInput) -> SyncResult:
        return await _push("save_workspace")

    @activity.defn(name=A.LAUNCH_CONTAINER)
    async def launch_container(inp: LaunchInput) -> LaunchResult:
        script.calls["launch"] += 1
        if inp.image == "missing-image":
            raise ApplicationError(
                "image missing-image is not on this host: build it with `bash images/build.sh`",
                type=codes.IMAGE_NOT_FOUND,
                non_retryable=True,
            )
        script.container_running = True
        script.exited = asyncio.Event()
        script.exit_code = None
        return LaunchResult(
            container=f"ainb-nb-{inp.ref.notebook_id}",
            url="http://127.0.0.1:1/lab",
            port=1,
            started_at=datetime.now(UTC),
        )

    @activity.defn(name=A.WAIT_EDITOR_READY)
    async def wait_editor_ready(inp: ReadyInput) -> None:
        script.calls["ready"] += 1

    @activity.defn(name=A.LAUNCH_EDITOR)
    async def launch_editor(inp: LaunchInput) -> LaunchResult:
        result = await launch_container(inp)
        await wait_editor_ready(
            ReadyInput(ref=inp.ref, port=result.port, timeout_s=inp.ready_timeout_s)
        )
        return result

    @activity.defn(name=A.WATCH_CONTAINER)
    async def watch_container(inp: WatchInput) -> WatchResult:
        script.calls["watch"] += 1
        if not script.instant_watch:
            try:
                await asyncio.wait_for(_wait_exit(), inp.max_s)
            except TimeoutError:
                pass
        if not script.exited.is_set():
            return WatchResult(running=True)
        script.container_running = False
        return WatchResult(exit_code=script.exit_code)

    async def _wait_exit() -> None:
        while not script.exited.is_set():
            activity.heartbeat()
            try:
                await asyncio.wait_for(script.exited.wait(), 0.2)
            except TimeoutError:
                pass

    @activity.defn(name=A.STOP_CONTAINER)
    async def stop_container(inp: StopContainerInput) -> StopContainerResult:
        script.calls["stop_container"] += 1
        existed = script.container_running
        script.container_running = False
        script.exited.set()
        return StopContainerResult(existed=existed, exit_code=0 if existed else None)

    @activity.defn(name=A.REMOVE_LOCAL_DATA)
    async def remove_local_data(ref: NotebookRef) -> None:
        script.calls["remove_local_data"] += 1

    @activity.defn(name=A.RECORD_USAGE)
    async def record_usage(record: UsageRecord) -> bool:
        script.ledger_writes += 1
        if script.ledger_down:
            raise ApplicationError("the ledger does not answer", type="LEDGER_UNAVAILABLE")
        if record.key in script.ledger:
            return False
        script.ledger[record.key] = record
        return True

    control = [request_capacity, release_capacity, delete_workspace, record_usage]
    host = [
        pull_volume,
        restore_workspace,
        push_volume,
        save_workspace,
        launch_container,
        wait_editor_ready,
        launch_editor,
        watch_container,
        stop_container,
        remove_local_data,
    ]
    return control, host
