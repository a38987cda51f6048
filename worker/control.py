"""The control-plane worker: notebook workflows and placement/platform-storage activities."""

from __future__ import annotations

import asyncio

from temporalio.worker import Worker

from activities.control import ControlActivities
from domain.config import Settings
from domain.ids import CONTROL_TASK_QUEUE
from worker.connect import connect
from worker.run import run_until_signalled, setup_logging
from workflows.notebook import NotebookWorkflow


def build_worker(client, settings: Settings) -> Worker:
    return Worker(
        client,
        task_queue=CONTROL_TASK_QUEUE,
        workflows=[NotebookWorkflow],
        activities=ControlActivities(settings).activities(),
    )


async def amain() -> None:
    settings = Settings.load()
    client = await connect(settings)
    await run_until_signalled(build_worker(client, settings), "control worker")


def main() -> None:
    setup_logging()
    asyncio.run(amain())


if __name__ == "__main__":
    main()
