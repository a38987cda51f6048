"""The control-plane worker: notebook and fleet workflows, and the control activities."""

from __future__ import annotations

import asyncio
import logging

from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.control import ControlActivities
from activities.fleet import FleetActivities
from domain.config import Settings
from domain.ids import CONTROL_TASK_QUEUE
from domain.protocol import FLEET_WORKFLOW_ID
from temporal_client import fleet_calls, revival
from temporal_client.connect import connect
from worker.metrics import start_metrics
from worker.run import run_until_signalled, setup_logging
from workflows.fleet import FleetWorkflow
from workflows.notebook import NotebookWorkflow

log = logging.getLogger("ainb.control")


def build_worker(client, settings: Settings) -> Worker:
    return Worker(
        client,
        task_queue=CONTROL_TASK_QUEUE,
        workflows=[NotebookWorkflow, FleetWorkflow],
        workflow_runner=SandboxedWorkflowRunner(
            restrictions=SandboxRestrictions.default.with_passthrough_all_modules()
        ),
        activities=ControlActivities(settings).activities() + FleetActivities(client).activities(),
    )


async def ensure_fleet(client: Client, settings: Settings) -> None:
    """Start the fleet workflow unless it runs, and give it the current configuration."""
    handle = await client.start_workflow(
        FleetWorkflow.run,
        settings.fleet_input(),
        id=FLEET_WORKFLOW_ID,
        task_queue=CONTROL_TASK_QUEUE,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        static_summary="the fleet: hosts, capacity, queue",
    )
    await fleet_calls.configure(handle, settings.fleet_input())


async def sweep_closed(client: Client, settings: Settings) -> None:
    """Take over notebooks whose workflow was closed from outside, now and then (the host
    agents do it at once for those whose container they find)."""
    while True:
        try:
            taken = await revival.sweep(client)
            if taken:
                log.warning("took over %d notebook(s) closed from outside", taken)
        except Exception:
            log.exception("sweep of closed notebooks failed; trying again later")
        await asyncio.sleep(settings.reconcile_interval_s)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("fleet not configured: %s", task.exception())


async def amain() -> None:
    settings = Settings.load()
    settings.require_token_secret()
    metrics = start_metrics(settings.metrics_address)
    client = await connect(settings, metrics.runtime if metrics else None)
    worker = build_worker(client, settings)
    # The worker must run for the fleet to take the configure update.
    configured = asyncio.create_task(ensure_fleet(client, settings))
    configured.add_done_callback(_log_failure)
    sweeper = asyncio.create_task(sweep_closed(client, settings))
    try:
        await run_until_signalled(worker, "control worker")
    finally:
        sweeper.cancel()


def main() -> None:
    setup_logging()
    asyncio.run(amain())


if __name__ == "__main__":
    main()
