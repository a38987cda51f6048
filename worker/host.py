"""The host agent: a worker bound to one host's container runtime, on that host's queue."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from temporalio.worker import Worker

from activities.host import HostActivities
from activities.runtime.base import ContainerRuntime
from activities.runtime.docker_runtime import DockerRuntime, engine_answers
from activities.runtime.local_runtime import LocalRuntime
from activities.runtime.sim_runtime import SimRuntime
from domain.config import Settings
from domain.ids import host_task_queue
from worker.connect import connect
from worker.log_server import LogServer
from worker.presence import Presence
from worker.run import run_until_signalled, setup_logging

log = logging.getLogger("ainb.host")


def choose_runtime(settings: Settings) -> ContainerRuntime:
    host_dir = (settings.data_dir / "hosts" / settings.host_name).resolve()
    if settings.runtime == "sim":
        return SimRuntime(host_dir / "sim-runtime")
    if settings.runtime == "docker" or (settings.runtime == "auto" and engine_answers()):
        return DockerRuntime(installation=settings.installation_id, host=settings.host_name)
    local_dir = (settings.data_dir / "hosts" / settings.host_name / "local-runtime").resolve()
    return LocalRuntime(local_dir)


def build_worker(client, settings: Settings, runtime: ContainerRuntime) -> Worker:
    return Worker(
        client,
        task_queue=host_task_queue(settings.host_name),
        activities=HostActivities(settings, runtime).activities(),
        max_concurrent_activities=200,
        # Heartbeats reach the server often, so a stop cancels a sync within seconds.
        max_heartbeat_throttle_interval=timedelta(seconds=2),
        default_heartbeat_throttle_interval=timedelta(seconds=2),
        graceful_shutdown_timeout=timedelta(seconds=5),
    )


async def amain() -> None:
    settings = Settings.load()
    runtime = choose_runtime(settings)
    log.info("host %s uses the %s runtime", settings.host_name, runtime.name)
    client = await connect(settings)
    logs = LogServer(settings, runtime)
    serving_logs = asyncio.create_task(logs.serve())
    presence = asyncio.create_task(Presence(client, settings, runtime, logs.url).run())
    try:
        await run_until_signalled(
            build_worker(client, settings, runtime), f"host agent {settings.host_name}"
        )
    finally:
        presence.cancel()
        logs.stop()
        await asyncio.gather(serving_logs, return_exceptions=True)


def main() -> None:
    setup_logging()
    asyncio.run(amain())


if __name__ == "__main__":
    main()
