"""The host agent: a worker bound to one host's container runtime, on that host's queue."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from temporalio.worker import Worker

from activities.host import HostActivities
from activities.paths import host_dir
from activities.runtime.base import ContainerRuntime
from activities.runtime.docker_runtime import DockerRuntime, engine_answers
from activities.runtime.local_runtime import LocalRuntime
from activities.runtime.sim_runtime import SimRuntime
from activities.runtime.warm_pool import WarmPool
from domain.config import Settings
from domain.ids import host_task_queue
from temporal_client.connect import connect
from worker.editor_tunnel import EditorTunnel
from worker.log_server import LogServer
from worker.metrics import start_metrics
from worker.pool_keeper import PoolKeeper
from worker.presence import Presence
from worker.run import run_until_signalled, setup_logging

log = logging.getLogger("ainb.host")


class UnsafeSettings(SystemExit):
    pass


def check_isolation(settings: Settings) -> None:
    """Host networking puts notebook code beside every platform port: refused unless the
    operator opted out by name, and then said at every start."""
    if settings.notebook_network != "host":
        return
    if not settings.unsafe_notebooks_share_host_network:
        raise UnsafeSettings(
            "notebook_network 'host' lets every notebook reach Temporal, S3, the API and "
            "the other notebooks on this host; refusing to start. Use 'none' (the default) "
            "or a network of your own, or set unsafe_notebooks_share_host_network=true"
        )
    log.warning(
        "UNSAFE: notebooks on host %s share its network namespace "
        "(unsafe_notebooks_share_host_network): their code reaches every platform port here",
        settings.host_name,
    )


def choose_runtime(settings: Settings) -> ContainerRuntime:
    """Containers, always, unless a simulated or a local-process host was asked for by
    name: the local-process runtime runs notebook code with this agent's rights."""
    state = host_dir(settings.data_dir, settings.host_name)
    if settings.runtime == "sim":
        return SimRuntime(state / "sim-runtime")
    if settings.runtime == "local":
        log.warning(
            "host %s runs notebooks as LOCAL PROCESSES (runtime 'local'): a single-user "
            "development choice, with no isolation between notebooks and this machine",
            settings.host_name,
        )
        return LocalRuntime(state / "local-runtime")
    if settings.runtime == "auto" and not engine_answers():
        raise UnsafeSettings(
            f"host {settings.host_name}: no Docker engine answers, and notebooks only run in "
            "containers; install and start one (apt-get install docker.io; dockerd), or ask "
            "for the local-process runtime by name (runtime 'local', single-user development)"
        )
    check_isolation(settings)
    return DockerRuntime(installation=settings.installation_id, host=settings.host_name)


def build_pool(settings: Settings, runtime: ContainerRuntime) -> WarmPool | None:
    if not any(n > 0 for n in settings.warm_pool.values()):
        return None
    if not isinstance(runtime, DockerRuntime):
        log.warning("warm_pool is set, but host %s has no Docker runtime: no pool", runtime.name)
        return None
    return WarmPool(
        runtime,
        settings.warm_pool,
        host_dir(settings.data_dir, settings.host_name) / "pool",
        uid=settings.editor_uid,
        gid=settings.editor_gid,
        network=settings.notebook_network,
    )


def build_worker(
    client, settings: Settings, runtime: ContainerRuntime, pool: WarmPool | None = None
) -> Worker:
    return Worker(
        client,
        task_queue=host_task_queue(settings.host_name),
        activities=HostActivities(settings, runtime, pool).activities(),
        max_concurrent_activities=200,
        # Heartbeats reach the server often, so a stop cancels a sync within seconds.
        max_heartbeat_throttle_interval=timedelta(seconds=2),
        default_heartbeat_throttle_interval=timedelta(seconds=2),
        graceful_shutdown_timeout=timedelta(seconds=5),
    )


async def amain() -> None:
    settings = Settings.load()
    settings.require_token_secret()
    state = host_dir(settings.data_dir, settings.host_name)
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    state.chmod(0o700)  # notebooks' data: no other local user reads it
    runtime = choose_runtime(settings)
    log.info("host %s uses the %s runtime", settings.host_name, runtime.name)
    metrics = start_metrics(settings.metrics_address)
    client = await connect(settings, metrics.runtime if metrics else None)
    logs = LogServer(settings, runtime)
    tunnel = EditorTunnel(settings)
    serving_logs = asyncio.create_task(logs.serve())
    serving_editors = asyncio.create_task(tunnel.serve())
    presence = asyncio.create_task(
        Presence(client, settings, runtime, logs.url, tunnel.address).run()
    )
    pool = build_pool(settings, runtime)
    keeper = PoolKeeper(pool) if pool is not None else None
    keeping = asyncio.create_task(keeper.run()) if keeper is not None else None
    try:
        await run_until_signalled(
            build_worker(client, settings, runtime, pool), f"host agent {settings.host_name}"
        )
    finally:
        if keeping is not None and keeper is not None:
            keeping.cancel()
            await asyncio.gather(keeping, return_exceptions=True)
            await asyncio.get_running_loop().run_in_executor(None, keeper.drain)
        presence.cancel()
        logs.stop()
        tunnel.stop()
        serving_editors.cancel()
        await asyncio.gather(serving_logs, serving_editors, return_exceptions=True)


def main() -> None:
    setup_logging()
    asyncio.run(amain())


if __name__ == "__main__":
    main()
