"""The RUNNING phase: the container watched until it exits or its timeout, proof of
running billed at every checkpoint, while the sync loop runs beside it."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from domain.states import NotebookState

from workflows.notebook import events
from workflows.notebook.context import RunContext
from workflows.notebook.fleet_calls import flush_usage
from workflows.notebook.host_calls import ActivityFailed, watch
from workflows.notebook.syncs import abandon_datasyncs, sync_loop

S = NotebookState


async def running(nb: RunContext) -> None:
    """Watch the container until it exits or its timeout, while a second task runs the
    syncs asked for and the periodic workspace checkpoints. A stop or delete cancels
    this phase; the syncs are cancelled (and waited for) before the teardown pushes."""
    nb.syncs_stopping = False
    syncs = asyncio.create_task(sync_loop(nb))
    try:
        await _watch_loop(nb)
    except GeneratorExit:
        raise  # evicted from the worker's cache: nothing may be awaited any more
    except BaseException:
        await _stop_syncs(nb, syncs)
        raise
    await _stop_syncs(nb, syncs)


async def _stop_syncs(nb: RunContext, syncs: asyncio.Task[None]) -> None:
    # Nothing may still write to the notebook's data once the teardown starts: a
    # sync whose activity finished despite the cancel must not start another.
    nb.syncs_stopping = True
    while not syncs.done():
        syncs.cancel()
        try:
            await workflow.wait([syncs])
        except asyncio.CancelledError:
            continue  # a second stop or delete: keep waiting for the syncs
    abandon_datasyncs(nb)


async def _watch_loop(nb: RunContext) -> None:
    b = nb.billing
    run = nb.m.run
    assert b.started_at is not None and run is not None
    deadline = b.started_at + timedelta(seconds=run.timeout_s)
    while True:
        now = workflow.now()
        if now >= deadline:
            # The period ends at the deadline itself, not when the timer got round to it.
            nb.bill_until(deadline, final=True)
            events.timed_out(nb)
            return
        interval = min(timedelta(seconds=nb.inp.tuning.checkpoint_s), deadline - now)
        planned = now + interval
        try:
            result = await watch(nb, interval)
            if _left_running(nb):
                return
        except ActivityFailed as failed:
            events.watch_failed(nb, failed.info)
            return
        if result is None:
            events.host_lost(nb, "the host stopped answering while the notebook was running")
            return
        if not result.running:
            events.exited(nb, result)
            return
        # "Still running" is proof up to now: bill it, then wait out the interval (the
        # watch on a real host already did; a test's fake returns at once).
        nb.bill_until(workflow.now(), final=False)
        nb.publish_details()
        await flush_usage(nb)
        if _left_running(nb):
            return
        rest = planned - workflow.now()
        if rest > timedelta(0):
            await workflow.sleep(rest)
        if _left_running(nb):
            return
        await _maybe_continue_as_new(nb)


def _left_running(nb: RunContext) -> bool:
    """A stop or delete whose cancel of this phase was lost: an activity the phase
    awaited completed in the same workflow task, and Temporal's SDK gave the phase
    the result instead of the cancel. The phase ends here rather than watch on."""
    return nb.stop_wins and nb.status.state != S.RUNNING


async def _maybe_continue_as_new(nb: RunContext) -> None:
    # A sync in flight belongs to this run: continue as new once it is done.
    if nb.history_is_long() and not nb.sync_busy and not nb.m.sync_queue:
        await flush_usage(nb)
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(nb.carry_over())
