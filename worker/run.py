"""Run a worker until SIGINT/SIGTERM, then shut it down gracefully."""

from __future__ import annotations

import asyncio
import logging
import signal

from temporalio.worker import Worker


async def run_until_signalled(worker: Worker, what: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with worker:
        logging.getLogger("ainb").info("%s polling task queue %s", what, worker.task_queue)
        await stop.wait()


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
