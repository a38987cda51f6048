"""The STARTING phase: data an earlier run left saved first, capacity, the data pulled,
the container launched, the editor awaited."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from domain import activity_names as A
    from domain import codes
    from domain.gateway import ready_path
    from domain.messages import LaunchInput, LaunchResult, ReadyInput, RunSettings
    from domain.status import Info

from workflows.notebook import events
from workflows.notebook.context import RunContext
from workflows.notebook.fleet_calls import capacity
from workflows.notebook.host_calls import ActivityFailed, HostLost, all_or_nothing, host_activity
from workflows.notebook.syncs import sync_target
from workflows.notebook.teardown import save_left_data

# Failures of launch_editor that come before any container exists.
_REFUSED_BEFORE_LAUNCH = frozenset({codes.IMAGE_NOT_FOUND, codes.SPEC_REFUSED})


async def starting(nb: RunContext) -> None:
    m = nb.m
    m.ending = None
    m.restart_after_stop = False
    m.container_launched = False
    m.task_queue = None
    spec = nb.inp.spec
    m.run = RunSettings(timeout_s=spec.timeout, auto_restart=spec.timeout_auto_restart)
    nb.status.endpoint = None
    nb.status.container = None
    if nb.keeps_data and nb.status.left_on_host is not None:
        # Before anything else can reuse or remove that host's directory.
        if await save_left_data(nb, deleting=False) == "failed":
            events.save_failed(nb, "failed", deleting=False)
            return
    try:
        await _start_sequence(nb)
    except HostLost:
        events.host_lost(nb, "the host stopped answering while the notebook was starting")
        return
    except ActivityFailed as failed:
        events.start_failed(nb, failed.state, failed.info)
        return
    events.ready(nb)


async def _start_sequence(nb: RunContext) -> None:
    allocation = await capacity(nb)
    nb.m.allocation = allocation
    nb.m.task_queue = allocation.task_queue
    nb.status.host = allocation.host
    gpus = f", GPUs {','.join(allocation.gpu_ids)}" if allocation.gpu_ids else ""
    nb.set_info(Info(message=f"placed on host {allocation.host}{gpus}; pulling data"))
    nb.mark_phase("pull")

    await _pull_data(nb)
    nb.mark_phase("launch")

    tuning = nb.inp.tuning
    if nb.launch_waits:
        nb.set_info(Info(message="launching the editor"))
        try:
            launch = await host_activity(
                nb,
                A.LAUNCH_EDITOR,
                LaunchInput(
                    ref=nb.ref,
                    spec=nb.inp.spec,
                    image=nb.inp.image,
                    allocation=allocation,
                    ready_timeout_s=tuning.ready_timeout_s,
                    ready_path=ready_path(nb.inp.spec.editor),
                ),
                result_type=LaunchResult,
                start_to_close=timedelta(minutes=5, seconds=tuning.ready_timeout_s),
                attempts=tuning.launch_attempts,
                failure_code=codes.LAUNCH_FAILED,
            )
        except ActivityFailed as failed:
            # A container may be there unless the launch was refused before making one:
            # the teardown stops it (a no-op when there is none).
            nb.m.container_launched = failed.info.code not in _REFUSED_BEFORE_LAUNCH
            raise
        nb.m.container_launched = True
        nb.status.container = launch.container
        nb.status.endpoint = launch.url
        # One activity launched and waited: the container's start splits the two phases.
        nb.mark_phase("ready", launch.started_at)
        return

    nb.set_info(Info(message="launching the editor container"))
    launch = await host_activity(
        nb,
        A.LAUNCH_CONTAINER,
        LaunchInput(ref=nb.ref, spec=nb.inp.spec, image=nb.inp.image, allocation=allocation),
        result_type=LaunchResult,
        start_to_close=timedelta(minutes=5),
        attempts=tuning.launch_attempts,
        failure_code=codes.LAUNCH_FAILED,
    )
    nb.m.container_launched = True
    nb.status.container = launch.container
    nb.status.endpoint = launch.url

    nb.set_info(Info(message="waiting for the editor to answer"))
    nb.mark_phase("ready")
    await host_activity(
        nb,
        A.WAIT_EDITOR_READY,
        ReadyInput(
            ref=nb.ref,
            port=launch.port,
            timeout_s=tuning.ready_timeout_s,
            path=ready_path(nb.inp.spec.editor),
        ),
        result_type=None,
        start_to_close=timedelta(seconds=tuning.ready_timeout_s + 30),
        attempts=2,
        failure_code=codes.EDITOR_NOT_READY,
    )


async def _pull_data(nb: RunContext) -> None:
    """Restore the workspace and pull every volume, in parallel."""
    ws = nb.status.workspace
    assert ws is not None
    # A partial restore must never be pushed over the saved copy (I1).
    ws.restored = not ws.saved
    for v in nb.status.volumes:
        v.pulled = False
    jobs = []
    if ws.saved:
        jobs.append(_restore_workspace(nb))
    jobs.extend(_pull_volume(nb, i) for i in range(len(nb.inp.spec.volumes)))
    await all_or_nothing(jobs)


async def _restore_workspace(nb: RunContext) -> None:
    ws = nb.status.workspace
    assert ws is not None
    await sync_target(
        nb,
        None,
        "pull",
        attempts=nb.inp.tuning.start_sync_attempts,
        failure_code=codes.STORAGE_UNAVAILABLE,
    )
    ws.restored = True


async def _pull_volume(nb: RunContext, index: int) -> None:
    await sync_target(
        nb,
        index,
        "pull",
        attempts=nb.inp.tuning.start_sync_attempts,
        failure_code=codes.STORAGE_UNAVAILABLE,
    )
    nb.status.volumes[index].pulled = True
    nb.status.volumes[index].repull = False
