"""Sync scheduling: one sync of a target shown in the status, a save retried until storage
takes it, and the RUNNING phase's sync loop (datasyncs asked for, workspace checkpoints)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from domain import activity_names as A
    from domain import codes
    from domain.datasync import WORKSPACE
    from domain.messages import SyncResult, VolumeSyncInput
    from domain.protocol import sync_activity_id, sync_key
    from domain.states import NotebookState
    from domain.status import (
        SYNC_COUNTERS,
        DataSync,
        Info,
        SyncProgress,
        SyncState,
        UnsavedItem,
    )

from workflows.notebook.context import RunContext
from workflows.notebook.host_calls import ActivityFailed, HostLost, host_activity

S = NotebookState
# Finished datasyncs kept in the status (queued and running ones are always kept).
KEEP_DATASYNCS = 10


async def sync_target(
    nb: RunContext,
    index: int | None,
    direction: str,
    *,
    attempts: int,
    failure_code: str,
    task_queue: str | None = None,
    keep_remote: bool = False,
    preserved: bool = False,
) -> SyncProgress:
    """One sync of the workspace (index None) or a volume; its status shows it running
    (the API adds the live numbers from the activity's heartbeats), then its result."""
    if index is None:
        holder: Any = nb.status.workspace
        activity = A.SAVE_WORKSPACE if direction == "push" else A.RESTORE_WORKSPACE
        arg: Any = nb.workspace_input()
        if keep_remote:
            arg.mirror = False
    else:
        holder = nb.status.volumes[index]
        activity = A.PUSH_VOLUME if direction == "push" else A.PULL_VOLUME
        arg = VolumeSyncInput(ref=nb.ref, index=index, volume=nb.inp.spec.volumes[index])
        arg.keep_remote, arg.preserved = keep_remote, preserved
    running = SyncProgress(direction=direction, state=SyncState.RUNNING, started_at=workflow.now())
    holder.last_sync = running
    try:
        result: SyncResult = await host_activity(
            nb,
            activity,
            arg,
            result_type=SyncResult,
            start_to_close=timedelta(hours=12),
            attempts=attempts,
            failure_code=failure_code,
            activity_id=sync_activity_id(sync_key(index), direction, workflow.uuid4().hex[:8]),
            task_queue=task_queue,
        )
    except GeneratorExit:
        raise
    except BaseException as err:
        message = (
            err.info.message
            if isinstance(err, ActivityFailed)
            else "the host stopped answering"
            if isinstance(err, HostLost)
            else "interrupted"
        )
        holder.last_sync = running.model_copy(
            update={"state": SyncState.FAILED, "ended_at": workflow.now(), "message": message}
        )
        raise
    holder.last_sync = result.progress
    if index is None and direction == "push":
        holder.saved = True
        holder.last_saved_at = workflow.now()
    return result.progress


async def save(
    nb: RunContext,
    index: int | None,
    direction: str,
    *,
    task_queue: str | None = None,
    keep_remote: bool = False,
    preserved: bool = False,
) -> UnsavedItem | None:
    """One sync, retried while storage is unreachable (SYNC_RETRYING); a failure
    retries cannot fix is returned as what stays unsaved (this run keeps data), or
    retried forever like any other (a run from before the patch)."""
    what = "workspace" if index is None else f"volume {nb.target_name(index)}"
    if preserved:
        what = f"preserved files of {what}"
    verb = "saving" if direction == "push" else "pulling"
    delay = 1.0
    while True:
        try:
            await sync_target(
                nb,
                index,
                direction,
                attempts=3,
                failure_code=codes.STORAGE_UNAVAILABLE,
                task_queue=task_queue,
                keep_remote=keep_remote,
                preserved=preserved,
            )
            return None
        except ActivityFailed as failed:
            if nb.keeps_data and failed.state == S.FAILED:
                d = failed.details
                return UnsavedItem(
                    target=nb.target_name(index),
                    path=d.get("path"),
                    files=d.get("files"),
                    bytes=d.get("bytes"),
                    error=failed.info.message,
                )
            nb.set_info(
                Info(
                    code=codes.SYNC_RETRYING,
                    message=f"{verb} {what} failed, retrying in {delay:.0f}s: "
                    f"{failed.info.message}",
                )
            )
        await workflow.sleep(timedelta(seconds=delay))
        delay = min(delay * 2, nb.inp.tuning.push_retry_max_interval_s)


def queue_datasync(nb: RunContext, direction: str, volume: str | None, targets: list[str]) -> None:
    """Queue a datasync, unless the same request still waits in the queue (it covers it)."""
    queued = next(
        (
            d
            for d in nb.status.datasyncs
            if d.state == SyncState.QUEUED and (d.direction, d.volume) == (direction, volume)
        ),
        None,
    )
    if queued is None:
        job = DataSync(
            id=workflow.uuid4().hex[:12],
            direction=direction,
            volume=volume,
            requested_at=workflow.now(),
            targets=targets,
        )
        nb.status.datasyncs.append(job)
        nb.m.sync_queue.append(job.id)
        nb.m.updated_at = workflow.now()


async def sync_loop(nb: RunContext) -> None:
    """While RUNNING: the datasyncs asked for, in order, and the periodic workspace
    checkpoint (a normal incremental push), one at a time."""
    ws = nb.status.workspace
    assert ws is not None
    queue = nb.m.sync_queue
    every = nb.inp.tuning.workspace_checkpoint_s
    if every > 0 and ws.next_checkpoint_at is None:
        ws.next_checkpoint_at = workflow.now() + timedelta(seconds=every)
    while not nb.syncs_stopping:
        due = ws.next_checkpoint_at
        wait = None if due is None else due - workflow.now()
        if not queue and (wait is None or wait > timedelta(0)):
            try:
                await workflow.wait_condition(
                    lambda: bool(queue) or nb.syncs_stopping, timeout=wait
                )
            except asyncio.TimeoutError:  # noqa: UP041 (TimeoutError is Temporal's here)
                pass
        if nb.syncs_stopping:
            return
        nb.sync_busy = True
        try:
            if queue:
                await _run_datasync(nb, _datasync(nb, queue[0]))
                queue.pop(0)
            elif due is not None and workflow.now() >= due:
                try:
                    await sync_target(
                        nb, None, "push", attempts=3, failure_code=codes.STORAGE_UNAVAILABLE
                    )
                except (ActivityFailed, HostLost):
                    pass  # shown in workspace.last_sync; the next checkpoint tries again
                ws.next_checkpoint_at = workflow.now() + timedelta(seconds=every)
        finally:
            nb.sync_busy = False


def _datasync(nb: RunContext, sync_id: str) -> DataSync:
    return next(d for d in nb.status.datasyncs if d.id == sync_id)


async def _run_datasync(nb: RunContext, job: DataSync) -> None:
    job.state = SyncState.RUNNING
    job.started_at = workflow.now()
    job.message = ""
    problems: list[str] = []
    for target in job.targets:
        index = None if target == WORKSPACE else nb.volume_index(target)
        job.current = target
        try:
            progress = await sync_target(
                nb, index, job.direction, attempts=3, failure_code=codes.STORAGE_UNAVAILABLE
            )
        except ActivityFailed as failed:
            if index is not None and job.direction == "pull":
                nb.status.volumes[index].repull = True
            problems.append(f"{target}: {failed.info.message}")
            continue
        except HostLost:
            problems.append(f"{target}: the host stopped answering")
            break
        finally:
            job.current = None
        for name in SYNC_COUNTERS:
            setattr(job, name, getattr(job, name) + getattr(progress, name))
        if index is not None and job.direction == "pull":
            nb.status.volumes[index].repull = False
    job.state = SyncState.FAILED if problems else SyncState.DONE
    job.ended_at = workflow.now()
    job.message = "; ".join(problems)
    _trim_datasyncs(nb)


def abandon_datasyncs(nb: RunContext) -> None:
    """The notebook left RUNNING: what was asked for and not done will not be."""
    for job in nb.status.datasyncs:
        if job.state in (SyncState.QUEUED, SyncState.RUNNING):
            if job.state == SyncState.RUNNING and job.direction == "pull" and job.current:
                if job.current != WORKSPACE:
                    nb.status.volumes[nb.volume_index(job.current)].repull = True
            job.state = SyncState.FAILED
            job.current = None
            job.ended_at = workflow.now()
            job.message = (
                "interrupted: the notebook left RUNNING (its stop saves every rw and "
                "rwd volume and the workspace)"
            )
    nb.m.sync_queue.clear()
    ws = nb.status.workspace
    if ws is not None and nb.status.state != S.RUNNING:
        ws.next_checkpoint_at = None  # still RUNNING: a continue-as-new keeps the schedule


def _trim_datasyncs(nb: RunContext) -> None:
    jobs = nb.status.datasyncs
    finished = [j for j in jobs if j.state in (SyncState.DONE, SyncState.FAILED)]
    drop = {j.id for j in finished[: max(0, len(finished) - KEEP_DATASYNCS)]}
    nb.status.datasyncs = [j for j in jobs if j.id not in drop]
