"""A harness for the state machine: the real workflow, fake activities, a few helpers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from domain.ids import CONTROL_TASK_QUEUE, host_task_queue
from domain.messages import NotebookInput, Tuning
from domain.spec import NotebookSpec
from domain.states import NotebookState as S
from domain.status import Notebook
from tests.unit.fakes import HOST, Script, fake_activities
from workflows.notebook import NotebookWorkflow


def spec(**overrides) -> NotebookSpec:
    base = {
        "name": "nb",
        "framework": {"id": "python", "version": "3.11"},
        "resources": {"flavor": "ai1-1-cpu", "cpu": 1},
        "volumes": [
            {
                "bucket": "data-in",
                "alias": "local",
                "mount_path": "/workspace/in",
                "permission": "ro",
            },
            {
                "bucket": "data-out",
                "alias": "local",
                "mount_path": "/workspace/out",
                "permission": "rw",
            },
        ],
    }
    base.update(overrides)
    return NotebookSpec.model_validate(base)


class Harness:
    def __init__(self, client: Client, script: Script) -> None:
        self.client = client
        self.script = script
        self.handles: list[WorkflowHandle] = []

    async def create(
        self, image: str = "img", tuning: Tuning | None = None, **spec_overrides
    ) -> WorkflowHandle:
        notebook_id = uuid.uuid4().hex
        inp = NotebookInput(
            project="p",
            notebook_id=notebook_id,
            spec=spec(**spec_overrides),
            image=image,
            workspace_bucket="ws",
            created_at=datetime.now(UTC),
            tuning=tuning
            or Tuning(heartbeat_timeout_s=5, host_pickup_timeout_s=5, start_sync_attempts=2),
        )
        handle = await self.client.start_workflow(
            NotebookWorkflow.run, inp, id=f"notebook/p/{notebook_id}", task_queue=CONTROL_TASK_QUEUE
        )
        self.handles.append(handle)
        return handle

    async def close(self) -> None:
        """Terminate what a test left running, so no timer or activity of it outlives the
        test on the shared server (a running activity stops time skipping)."""
        for handle in self.handles:
            try:
                await handle.terminate("test over")
            except RPCError:
                pass  # already completed

    @staticmethod
    async def get(handle: WorkflowHandle) -> Notebook:
        return await handle.query(NotebookWorkflow.get)

    async def reach(self, handle: WorkflowHandle, state: S, limit_s: float = 30) -> Notebook:
        seen = []
        try:
            return await asyncio.wait_for(self._reach(handle, state, seen), limit_s)
        except TimeoutError:
            desc = await handle.describe()
            pending = [
                (a.activity_type.name, a.state, a.attempt, a.last_failure.message)
                for a in desc.raw_description.pending_activities
            ]
            raise AssertionError(f"never reached {state}; saw {seen}; pending {pending}") from None

    async def _reach(self, handle: WorkflowHandle, state: S, seen: list) -> Notebook:
        if True:
            while True:
                nb = await self.get(handle)
                if not seen or seen[-1] != nb.status.state:
                    seen.append(nb.status.state)
                if nb.status.state == state:
                    return nb
                await asyncio.sleep(0.05)
        raise AssertionError(f"never reached {state}; saw {seen}")  # pragma: no cover


@asynccontextmanager
async def harness(env: WorkflowEnvironment, script: Script | None = None) -> AsyncIterator[Harness]:
    script = script or Script()
    control, host = fake_activities(script)
    async with (
        Worker(
            env.client,
            task_queue=CONTROL_TASK_QUEUE,
            workflows=[NotebookWorkflow],
            activities=control,
        ),
        Worker(env.client, task_queue=host_task_queue(HOST), activities=host),
    ):
        h = Harness(env.client, script)
        try:
            yield h
        finally:
            await h.close()
