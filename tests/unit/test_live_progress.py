"""A sync's live numbers reach GET from its activity's last heartbeat, not from history."""

from __future__ import annotations

import asyncio

from temporalio.testing import WorkflowEnvironment

from api.fleet import FleetService
from api.service import NotebookService
from domain.config import Settings
from domain.messages import DeleteRequest
from domain.states import NotebookState as S
from domain.status import SyncState
from tests.unit.fakes import Script
from tests.unit.harness import harness
from workflows.notebook import NotebookWorkflow


async def test_get_shows_the_running_pull_numbers(env: WorkflowEnvironment) -> None:
    script = Script(
        block_pull=True,
        pull_details={"what": "volume", "files_total": 40, "files_done": 12, "bytes_done": 7},
    )
    async with harness(env, script) as h:
        handle = await h.create()
        await asyncio.wait_for(script.pull_started.wait(), 20)
        settings = Settings()
        service = NotebookService(env.client, settings, FleetService(env.client, settings))
        nid = handle.id.rsplit("/", 1)[-1]
        for _ in range(100):
            nb = await service.get("p", nid)
            sync = nb.status.volumes[0].last_sync
            if sync is not None and sync.files_done == 12:
                break
            await asyncio.sleep(0.1)
        assert nb.status.state == S.STARTING
        assert sync is not None and sync.state == SyncState.RUNNING and sync.direction == "pull"
        assert (sync.files_total, sync.files_done, sync.bytes_done) == (40, 12, 7)
        # nothing of it is in the workflow's own status (no history growth per heartbeat)
        raw = await h.get(handle)
        assert raw.status.volumes[0].last_sync.files_done == 0

        script.block_pull = False
        await h.reach(handle, S.RUNNING)
        await handle.execute_update(NotebookWorkflow.delete, DeleteRequest())
        await handle.result()
