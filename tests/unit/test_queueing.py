"""A notebook waiting for capacity: STARTING and saying so, started by the fleet's grant,
and stopped or deleted at once, for free, while it waits."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from temporalio.testing import WorkflowEnvironment

from domain import codes, protocol
from domain.fleet import Allocation
from domain.ids import host_task_queue
from domain.messages import DeleteRequest, StopRequest
from domain.states import NotebookState as S
from tests.unit.fakes import HOST, Script
from tests.unit.harness import harness
from workflows.notebook import NotebookWorkflow


async def _queued(h, handle):
    for _ in range(200):
        nb = await h.get(handle)
        if nb.status.info.code == codes.QUEUED:
            return nb
        await asyncio.sleep(0.05)
    raise AssertionError(f"never queued: {nb.status.info}")


async def test_stop_and_delete_while_queued_are_immediate_and_free(
    env: WorkflowEnvironment,
) -> None:
    script = Script(queue_requests=True)
    async with harness(env, script) as h:
        handle = await h.create()
        nb = await _queued(h, handle)
        assert nb.status.state == S.STARTING and "number 3 in line" in nb.status.info.message
        await handle.execute_update(NotebookWorkflow.stop, StopRequest())
        nb = await h.reach(handle, S.STOPPED)
        assert handle.id not in script.held  # the place in line was given back
        assert script.calls["launch"] == 0 and script.pushed == []
        assert nb.status.billed_minutes_total == 0 and script.billed() == 0

        other = await h.create()
        await _queued(h, other)
        await other.execute_update(NotebookWorkflow.delete, DeleteRequest())
        await other.result()
        assert other.id not in script.held


async def test_the_grant_starts_it_on_the_granted_host(env: WorkflowEnvironment) -> None:
    script = Script(queue_requests=True)
    async with harness(env, script) as h:
        handle = await h.create()
        await _queued(h, handle)
        grant = Allocation(
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
        await handle.signal(protocol.SIGNAL_CAPACITY_GRANTED, grant)
        nb = await h.reach(handle, S.RUNNING)
        assert nb.status.host == HOST
        await handle.execute_update(NotebookWorkflow.stop, StopRequest())
        await h.reach(handle, S.STOPPED)
        assert handle.id not in script.held  # released once the container was gone
