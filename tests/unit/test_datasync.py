"""Syncs while RUNNING: datasync requests and periodic workspace checkpoints."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from domain.messages import DataSyncRequest, StopRequest, Tuning
from domain.states import NotebookState as S
from domain.status import SyncState
from tests.unit.fakes import Script
from tests.unit.harness import Harness, harness
from workflows.notebook import NotebookWorkflow


async def _settled(h: Harness, handle, sync_id: str, limit_s: float = 20):
    async def poll():
        while True:
            nb = await h.get(handle)
            [job] = [d for d in nb.status.datasyncs if d.id == sync_id]
            if job.state in (SyncState.DONE, SyncState.FAILED):
                return nb, job
            await asyncio.sleep(0.05)

    return await asyncio.wait_for(poll(), limit_s)


async def _invalid(coro, field: str, part: str) -> None:
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await coro
    cause = info.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "INVALID", cause
    assert cause.details and cause.details[0] == field
    assert part in cause.message


async def test_datasync_push_pull_and_bad_requests(env: WorkflowEnvironment) -> None:
    async with harness(env) as h:
        handle = await h.create()
        await h.reach(handle, S.RUNNING)

        # a push with no volume: every rw/rwd volume, then the workspace
        nb = await handle.execute_update(
            NotebookWorkflow.datasync, DataSyncRequest(direction="push")
        )
        [job] = nb.status.datasyncs
        assert job.state == SyncState.QUEUED and job.targets == ["/workspace/out", "workspace"]
        nb, job = await _settled(h, handle, job.id)
        assert job.state == SyncState.DONE and job.started_at and job.ended_at
        assert h.script.pushed == ["push_volume:/workspace/out", "save_workspace"]
        assert nb.status.workspace.saved and nb.status.workspace.last_saved_at
        assert nb.status.state == S.RUNNING

        pulls = h.script.calls["pull_volume"]
        nb = await handle.execute_update(
            NotebookWorkflow.datasync, DataSyncRequest(direction="pull", volume="/workspace/in/")
        )
        _, job = await _settled(h, handle, nb.status.datasyncs[-1].id)
        assert job.targets == ["/workspace/in"] and job.state == SyncState.DONE
        assert h.script.calls["pull_volume"] == pulls + 1

        update = NotebookWorkflow.datasync
        await _invalid(
            handle.execute_update(
                update, DataSyncRequest(direction="push", volume="/workspace/in")
            ),
            "volume",
            "read-only",
        )
        await _invalid(
            handle.execute_update(update, DataSyncRequest(direction="pull", volume="/nope")),
            "volume",
            "no volume is mounted at '/nope'",
        )
        await _invalid(
            handle.execute_update(update, DataSyncRequest(direction="pull", volume="workspace")),
            "volume",
            "restored at start only",
        )

        await handle.execute_update(NotebookWorkflow.stop, StopRequest())
        await h.reach(handle, S.STOPPED)
        with pytest.raises(WorkflowUpdateFailedError) as info:
            await handle.execute_update(update, DataSyncRequest(direction="push"))
        assert info.value.cause.type == "CONFLICT" and "STOPPED" in info.value.cause.message


async def test_failed_push_is_reported_and_a_stop_interrupts_queued_syncs(
    env: WorkflowEnvironment,
) -> None:
    script = Script(push_failures=3)  # one datasync's three attempts of the first target
    async with harness(env, script) as h:
        handle = await h.create()
        await h.reach(handle, S.RUNNING)
        nb = await handle.execute_update(
            NotebookWorkflow.datasync, DataSyncRequest(direction="push", volume="/workspace/out")
        )
        nb, job = await _settled(h, handle, nb.status.datasyncs[-1].id)
        assert job.state == SyncState.FAILED and "storage does not answer" in job.message
        assert nb.status.volumes[1].last_sync.state == SyncState.FAILED
        assert nb.status.state == S.RUNNING  # a failed datasync does not stop the notebook

        # a push that hangs, one queued behind it; then the user stops the notebook
        script.block_push = asyncio.Event()
        first = await handle.execute_update(
            NotebookWorkflow.datasync, DataSyncRequest(direction="push", volume="workspace")
        )
        second = await handle.execute_update(
            NotebookWorkflow.datasync, DataSyncRequest(direction="pull")
        )
        again = await handle.execute_update(
            NotebookWorkflow.datasync, DataSyncRequest(direction="pull")
        )
        assert [d.id for d in again.status.datasyncs] == [d.id for d in second.status.datasyncs]
        await handle.execute_update(NotebookWorkflow.stop, StopRequest())
        script.block_push.set()
        nb = await h.reach(handle, S.STOPPED)
        jobs = {d.id: d for d in nb.status.datasyncs}
        # the running push finished (this fake ignores the cancel); the queued pull never ran
        assert jobs[first.status.datasyncs[-1].id].state == SyncState.DONE
        queued = jobs[second.status.datasyncs[-1].id]
        assert queued.state == SyncState.FAILED and "interrupted" in queued.message
        assert queued.started_at is None
        # the stop still saved everything (I2)
        assert script.pushed[-2:] == ["push_volume:/workspace/out", "save_workspace"]


async def test_an_unfinished_pull_is_finished_before_the_stop_pushes(
    env: WorkflowEnvironment,
) -> None:
    script = Script()
    async with harness(env, script) as h:
        handle = await h.create()
        await h.reach(handle, S.RUNNING)
        pulls = script.calls["pull_volume"]
        script.pull_failures = 3
        nb = await handle.execute_update(
            NotebookWorkflow.datasync, DataSyncRequest(direction="pull", volume="/workspace/out")
        )
        nb, job = await _settled(h, handle, nb.status.datasyncs[-1].id)
        assert job.state == SyncState.FAILED
        assert nb.status.volumes[1].repull and nb.status.volumes[1].pulled
        await handle.execute_update(NotebookWorkflow.stop, StopRequest())
        nb = await h.reach(handle, S.STOPPED)
        # 3 failed attempts, then the stop's pull, then its push: no local gap is ever
        # taken for a deletion, and the volume is still saved (I2)
        assert script.calls["pull_volume"] == pulls + 4
        assert script.pushed == ["push_volume:/workspace/out", "save_workspace"]
        assert not nb.status.volumes[1].repull


async def test_periodic_checkpoints_push_the_workspace(fresh_env: WorkflowEnvironment) -> None:
    script = Script(instant_watch=True)
    async with harness(fresh_env, script) as h:
        handle = await h.create(
            tuning=Tuning(checkpoint_s=60, workspace_checkpoint_s=600, heartbeat_timeout_s=5)
        )
        nb = await h.reach(handle, S.RUNNING)
        first_due = nb.status.workspace.next_checkpoint_at
        assert first_due is not None
        assert first_due - nb.status.last_started_at == timedelta(seconds=600)
        await fresh_env.sleep(timedelta(seconds=1850))
        nb = await h.get(handle)
        assert nb.status.state == S.RUNNING
        assert script.pushed == ["save_workspace"] * 3  # at 600, 1200 and 1800 s
        assert nb.status.workspace.saved and nb.status.workspace.last_sync.direction == "push"
        await handle.execute_update(NotebookWorkflow.stop, StopRequest())
        nb = await h.reach(handle, S.STOPPED)
        assert nb.status.workspace.next_checkpoint_at is None
