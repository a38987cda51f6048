"""Record the history of one notebook's whole life on the time-skipping server, with the
fake activities of the unit tests: created, RUNNING, patched, relabelled, a datasync, a
stop (and a token rotation, where the workflow has it), a start, then deleted (the workflow
completes).

    PYTHONPATH=<checkout> python tests/unit/histories/record.py OUT.json

Run against an older checkout (a git worktree of a released commit), it gives a history
today's workflow code must replay (test_replay.py): a notebook running when the platform
is upgraded keeps running. Written against the harness every version of the tests has.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from domain.messages import (
    DataSyncRequest,
    DeleteRequest,
    LabelsRequest,
    PatchRequest,
    StartRequest,
    StopRequest,
)
from domain.states import NotebookState as S
from tests.unit.fakes import Script
from tests.unit.harness import harness
from worker.connect import ensure_search_attributes
from workflows.notebook import NotebookWorkflow


async def record() -> str:
    path = shutil.which("temporal-test-server")
    async with await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=path, data_converter=pydantic_data_converter
    ) as env:
        await ensure_search_attributes(env.client)
        async with harness(env, Script(instant_watch=True)) as h:
            handle = await h.create(labels={"team": "vision"})
            await h.reach(handle, S.RUNNING)
            await handle.execute_update(
                NotebookWorkflow.patch, PatchRequest(timeout_auto_restart=True)
            )
            await handle.execute_update(
                NotebookWorkflow.set_labels, LabelsRequest(labels={"team": "nlp"})
            )
            await handle.execute_update(
                NotebookWorkflow.datasync, DataSyncRequest(direction="push")
            )
            while (await h.get(handle)).status.datasyncs[-1].state not in ("done", "failed"):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            if hasattr(NotebookWorkflow, "rotate_token"):  # since access control
                from domain.access import Actor, Role
                from domain.messages import RotateTokenRequest

                by = Actor(token_id="0123456789ab", name="recorder", role=Role.OPERATOR)
                await handle.execute_update(
                    NotebookWorkflow.rotate_token, RotateTokenRequest(by=by, reach={"team": "nlp"})
                )
                await handle.execute_update(NotebookWorkflow.stop, StopRequest(by=by))
            else:
                await handle.execute_update(NotebookWorkflow.stop, StopRequest())
            await h.reach(handle, S.STOPPED)
            await handle.execute_update(NotebookWorkflow.start, StartRequest())
            await h.reach(handle, S.RUNNING)
            await handle.execute_update(NotebookWorkflow.delete, DeleteRequest())
            await handle.result()
            history = await handle.fetch_history()
    return history.to_json()


if __name__ == "__main__":
    Path(sys.argv[1]).write_text(asyncio.run(record()))
