"""The notebook state machine on Temporal's time-skipping test server, with fake activities:
every transition of the lifecycle table and every rejected command."""

from __future__ import annotations

import asyncio

import pytest
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from domain import codes
from domain.ids import CONTROL_TASK_QUEUE, host_task_queue
from domain.messages import DeleteRequest, StartRequest, StopRequest, Tuning
from domain.states import NotebookState as S
from tests.unit.fakes import HOST, Script, fake_activities
from tests.unit.harness import Harness, harness
from workflows.notebook import NotebookWorkflow


async def rejected(coro, message_part: str) -> None:
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await coro
    cause = info.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "CONFLICT"
    assert message_part in cause.message


async def test_full_lifecycle_and_rejections(env: WorkflowEnvironment) -> None:
    async with harness(env) as h:
        handle = await h.create()
        nb = await h.reach(handle, S.RUNNING)
        assert nb.status.endpoint and nb.status.host == HOST and nb.status.last_started_at
        assert all(v.pulled for v in nb.status.volumes)
        assert h.script.calls["restore_workspace"] == 0  # new notebook: nothing to restore

        await rejected(handle.execute_update(NotebookWorkflow.start, StartRequest()), "RUNNING")

        nb = await handle.execute_update(NotebookWorkflow.stop, StopRequest())
        assert nb.status.state == S.STOPPING
        nb = await h.reach(handle, S.STOPPED)
        assert nb.status.info.code == codes.STOPPED_BY_USER
        assert nb.status.endpoint is None and nb.status.last_stopped_at
        # rw volume and workspace pushed, ro never (I2)
        assert sorted(h.script.pushed) == ["push_volume:/workspace/out", "save_workspace"]
        assert nb.status.workspace.saved and nb.status.workspace.last_saved_at
        assert not h.script.container_running

        await rejected(handle.execute_update(NotebookWorkflow.stop, StopRequest()), "STOPPED")

        nb = await handle.execute_update(NotebookWorkflow.start, StartRequest())
        assert nb.status.state == S.STARTING
        await h.reach(handle, S.RUNNING)
        assert h.script.calls["restore_workspace"] == 1  # the saved workspace comes back
        assert h.script.calls["launch"] == 2

        nb = await handle.execute_update(NotebookWorkflow.delete, DeleteRequest())
        assert nb.status.state == S.DELETING
        result = await handle.result()
        assert result.status.state == S.DELETED
        assert h.script.calls["delete_workspace"] == 1
        assert h.script.calls["remove_local_data"] == 2
        # deleting for good: the rw volume is pushed, the workspace is not
        assert h.script.pushed[-1] == "push_volume:/workspace/out"

        with pytest.raises(RPCError):
            await handle.execute_update(NotebookWorkflow.start, StartRequest())


async def test_stop_while_stopping_is_no_change(env: WorkflowEnvironment) -> None:
    script = Script(block_push=asyncio.Event())
    async with harness(env, script) as h:
        handle = await h.create()
        await h.reach(handle, S.RUNNING)
        await handle.execute_update(NotebookWorkflow.stop, StopRequest())
        nb = await handle.execute_update(NotebookWorkflow.stop, StopRequest())
        assert nb.status.state == S.STOPPING
        await rejected(handle.execute_update(NotebookWorkflow.start, StartRequest()), "STOPPING")
        script.block_push.set()
        await h.reach(handle, S.STOPPED)


async def test_editor_exit_codes(env: WorkflowEnvironment) -> None:
    async with harness(env) as h:
        handle = await h.create()
        await h.reach(handle, S.RUNNING)
        h.script.editor_exits(3)
        nb = await h.reach(handle, S.FAILED)
        assert nb.status.info.code == "EXIT_CODE_3"
        assert "save_workspace" in h.script.pushed  # data is still pushed back on failure

        await handle.execute_update(NotebookWorkflow.start, StartRequest())  # FAILED -> STARTING
        await h.reach(handle, S.RUNNING)
        h.script.editor_exits(0)
        nb = await h.reach(handle, S.STOPPED)
        assert nb.status.info.code == codes.EXITED


async def test_unreadable_volume_fails_without_launching(env: WorkflowEnvironment) -> None:
    async with harness(env) as h:
        handle = await h.create(
            volumes=[{"bucket": "missing-bucket", "alias": "local", "mount_path": "/workspace/x"}]
        )
        nb = await h.reach(handle, S.FAILED)
        assert nb.status.info.code == codes.DATA_SYNC_FAILED
        assert "missing-bucket" in nb.status.info.message
        assert h.script.calls["launch"] == 0 and not h.script.pushed


async def test_missing_image_is_an_error(env: WorkflowEnvironment) -> None:
    async with harness(env) as h:
        handle = await h.create(image="missing-image")
        nb = await h.reach(handle, S.ERROR)
        assert nb.status.info.code == codes.IMAGE_NOT_FOUND
        assert "images/build.sh" in nb.status.info.message
        assert not h.script.container_running
        # ERROR -> STARTING is allowed; DELETE from ERROR completes the workflow
        await handle.execute_update(NotebookWorkflow.delete, DeleteRequest())
        assert (await handle.result()).status.state == S.DELETED


async def test_storage_unavailable_at_start_is_an_error(env: WorkflowEnvironment) -> None:
    async with harness(env) as h:
        handle = await h.create(
            volumes=[{"bucket": "unreachable", "alias": "local", "mount_path": "/workspace/x"}]
        )
        nb = await h.reach(handle, S.ERROR)
        assert nb.status.info.code == codes.STORAGE_UNAVAILABLE
        assert h.script.calls["launch"] == 0


async def test_stop_while_starting_undoes_the_start(env: WorkflowEnvironment) -> None:
    script = Script(block_pull=True)
    async with harness(env, script) as h:
        handle = await h.create()
        await asyncio.wait_for(script.pull_started.wait(), 10)
        nb = await handle.execute_update(NotebookWorkflow.stop, StopRequest())
        assert nb.status.state == S.STOPPING
        nb = await h.reach(handle, S.STOPPED)
        assert script.calls["launch"] == 0
        # I1: nothing was fully pulled, so nothing is pushed over the remote copies
        assert script.pushed == []
        assert not any(v.pulled for v in nb.status.volumes)


async def test_delete_while_starting(env: WorkflowEnvironment) -> None:
    script = Script(block_pull=True)
    async with harness(env, script) as h:
        handle = await h.create()
        await asyncio.wait_for(script.pull_started.wait(), 10)
        nb = await handle.execute_update(NotebookWorkflow.delete, DeleteRequest())
        assert nb.status.state == S.DELETING
        assert (await handle.result()).status.state == S.DELETED
        assert script.calls["launch"] == 0 and script.pushed == []


async def test_delete_while_running_keeping_the_workspace(env: WorkflowEnvironment) -> None:
    async with harness(env) as h:
        handle = await h.create()
        await h.reach(handle, S.RUNNING)
        nb = await handle.execute_update(
            NotebookWorkflow.delete, DeleteRequest(keep_workspace=True)
        )
        assert nb.status.state == S.DELETING
        await rejected(handle.execute_update(NotebookWorkflow.start, StartRequest()), "DELETING")
        await rejected(handle.execute_update(NotebookWorkflow.stop, StopRequest()), "DELETING")
        again = await handle.execute_update(NotebookWorkflow.delete, DeleteRequest())
        assert again.status.state == S.DELETING  # 202, no change
        result = await handle.result()
        assert result.status.state == S.DELETED
        assert sorted(h.script.pushed) == ["push_volume:/workspace/out", "save_workspace"]
        assert h.script.calls["delete_workspace"] == 0


async def test_delete_while_stopping_waits_for_the_stop(env: WorkflowEnvironment) -> None:
    script = Script(block_push=asyncio.Event())
    async with harness(env, script) as h:
        handle = await h.create()
        await h.reach(handle, S.RUNNING)
        await handle.execute_update(NotebookWorkflow.stop, StopRequest())
        nb = await handle.execute_update(NotebookWorkflow.delete, DeleteRequest())
        assert nb.status.state == S.STOPPING  # DELETING once stopped
        script.block_push.set()
        assert (await handle.result()).status.state == S.DELETED
        # I2: the rw volume reached storage before DELETED; the workspace, deleted for good,
        # need not have been saved.
        assert "push_volume:/workspace/out" in script.pushed


async def test_push_retries_until_storage_is_back(env: WorkflowEnvironment) -> None:
    script = Script(push_failures=3)
    async with harness(env, script) as h:
        handle = await h.create(volumes=[])
        await h.reach(handle, S.RUNNING)
        await handle.execute_update(NotebookWorkflow.stop, StopRequest())
        saw_retrying = False
        async with asyncio.timeout(60):
            while True:
                nb = await h.get(handle)
                if nb.status.info.code == codes.SYNC_RETRYING:
                    assert nb.status.state == S.STOPPING
                    saw_retrying = True
                if nb.status.state != S.STOPPING:
                    break
                await asyncio.sleep(0.05)
        assert saw_retrying and nb.status.state == S.STOPPED
        assert script.pushed == ["save_workspace"]


async def test_host_lost_while_running(dev_env: WorkflowEnvironment) -> None:
    env = dev_env
    script = Script()
    control, host = fake_activities(script)
    async with Worker(
        env.client, task_queue=CONTROL_TASK_QUEUE, workflows=[NotebookWorkflow], activities=control
    ):
        h = Harness(env.client, script)
        handle = await h.create(tuning=Tuning(heartbeat_timeout_s=2, host_pickup_timeout_s=3))
        async with Worker(env.client, task_queue=host_task_queue(HOST), activities=host):
            await h.reach(handle, S.RUNNING)
        # The host agent is gone: heartbeats stop and nobody picks the watch up again.
        nb = await h.reach(handle, S.ERROR, limit_s=60)
        assert nb.status.info.code == codes.HOST_LOST
        # From ERROR, delete works without the host.
        await handle.execute_update(NotebookWorkflow.delete, DeleteRequest())
        assert (await handle.result()).status.state == S.DELETED
