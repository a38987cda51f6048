"""Timeouts, auto-restart, billing and continue-as-new on the time-skipping server."""

from __future__ import annotations

import itertools
import math
from datetime import timedelta

import pytest
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from domain import codes
from domain.messages import PatchRequest, StartRequest, StopRequest, Tuning
from domain.states import NotebookState as S
from tests.support import eventually_async
from tests.unit.fakes import Script
from tests.unit.harness import Harness, harness
from workflows.notebook import NotebookWorkflow

HOUR = 3600


@pytest.fixture()
def env(fresh_env: WorkflowEnvironment) -> WorkflowEnvironment:
    """Every test here skips time: each gets its own server (see conftest.fresh_env)."""
    return fresh_env


def _periods_billed(h: Harness, notebook_id: str) -> dict[int, int]:
    out: dict[int, int] = {}
    for r in h.script.ledger.values():
        if r.notebook_id == notebook_id:
            out[r.period] = out.get(r.period, 0) + r.minutes
    return out


async def _runs(h: Harness, handle: WorkflowHandle) -> list[int]:
    """History length of every run of the workflow, following the continue-as-new chain."""
    lengths = []
    run_id = handle.first_execution_run_id or handle.result_run_id
    while run_id:
        history = await h.client.get_workflow_handle(handle.id, run_id=run_id).fetch_history()
        lengths.append(len(history.events))
        last = history.events[-1]
        run_id = (
            last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
            if last.HasField("workflow_execution_continued_as_new_event_attributes")
            else None
        )
    return lengths


async def test_running_for_exactly_the_timeout_stops_with_timeout(env: WorkflowEnvironment) -> None:
    async with harness(env, Script(instant_watch=True)) as h:
        handle = await h.create(volumes=[], timeout=HOUR)
        nb = await h.reach(handle, S.RUNNING)
        started = nb.status.last_started_at
        assert nb.status.auto_stop_at - started == timedelta(seconds=HOUR)
        await env.sleep(timedelta(seconds=HOUR - 1))
        assert (await h.get(handle)).status.state == S.RUNNING  # not a second early
        await env.sleep(timedelta(seconds=2))
        nb = await h.reach(handle, S.STOPPED)
        assert nb.status.info.code == codes.TIMEOUT
        assert nb.status.last_stopped_at and "save_workspace" in h.script.pushed
        # exactly 60 minutes billed, in records at least every 15 minutes, each once
        nid = nb.id
        assert _periods_billed(h, nid) == {1: 60}
        records = sorted((r for r in h.script.ledger.values()), key=lambda r: r.seq)
        times = [started] + [r.recorded_at for r in records]
        # (a checkpoint lands within processing time of its 15 minutes)
        assert max(b - a for a, b in itertools.pairwise(times)) <= timedelta(minutes=15, seconds=1)
        assert records[-1].final and records[-1].recorded_at - started == timedelta(seconds=HOUR)
        # no restart without auto-restart
        await env.sleep(timedelta(seconds=2 * HOUR))
        assert (await h.get(handle)).status.state == S.STOPPED


async def test_auto_restart_cycles_and_a_manual_stop_does_not_restart(
    env: WorkflowEnvironment,
) -> None:
    async with harness(env, Script(instant_watch=True)) as h:
        handle = await h.create(volumes=[], timeout=600, timeout_auto_restart=True)
        await h.reach(handle, S.RUNNING)
        for _ in range(3):
            await env.sleep(timedelta(seconds=601))
            await h.reach(handle, S.RUNNING)
        assert h.script.calls["launch"] >= 4
        assert h.script.calls["restore_workspace"] >= 3  # restarted "as is", workspace restored
        billed = _periods_billed(h, (await h.get(handle)).id)
        assert len(billed) >= 4 and all(billed[p] == 10 for p in list(billed)[:3])

        await handle.execute_update(NotebookWorkflow.stop, StopRequest())
        nb = await h.reach(handle, S.STOPPED)
        assert nb.status.info.code == codes.STOPPED_BY_USER
        launches = h.script.calls["launch"]
        await env.sleep(timedelta(seconds=3 * 600))
        assert (await h.get(handle)).status.state == S.STOPPED
        assert h.script.calls["launch"] == launches


async def test_patch_applies_from_the_next_start(env: WorkflowEnvironment) -> None:
    async with harness(env, Script(instant_watch=True)) as h:
        handle = await h.create(volumes=[], timeout=HOUR)
        await h.reach(handle, S.RUNNING)
        nb = await handle.execute_update(
            NotebookWorkflow.patch, PatchRequest(timeout=600, timeout_auto_restart=True)
        )
        assert nb.spec.timeout == 600 and nb.spec.timeout_auto_restart
        await env.sleep(timedelta(seconds=900))
        assert (await h.get(handle)).status.state == S.RUNNING  # this run keeps its hour
        await handle.execute_update(NotebookWorkflow.stop, StopRequest())
        await h.reach(handle, S.STOPPED)
        await handle.execute_update(NotebookWorkflow.start, StartRequest())
        nb = await h.reach(handle, S.RUNNING)
        assert nb.status.auto_stop_at - nb.status.last_started_at == timedelta(seconds=600)
        assert nb.status.auto_restart


async def test_thirty_days_with_auto_restart_stays_under_the_history_bound(
    env: WorkflowEnvironment,
) -> None:
    async with harness(env, Script(instant_watch=True)) as h:
        handle = await h.create(
            volumes=[],
            timeout=7 * 24 * HOUR,
            timeout_auto_restart=True,
            # Hourly checkpoints keep the test quick; CAN is driven by the event count anyway.
            tuning=Tuning(
                heartbeat_timeout_s=5,
                host_pickup_timeout_s=5,
                checkpoint_s=3600,
                max_history_events=1000,
                workspace_checkpoint_s=0,  # billing and history only; see test_datasync
            ),
        )
        nb = await h.reach(handle, S.RUNNING)
        versions = [nb.status.version]
        for _ in range(30 * 4):
            await env.sleep(timedelta(hours=6))
            versions.append((await h.get(handle)).status.version)
        # Time stands still while the numbers are compared: a skip between the query and
        # the ledger's reading would bill one more checkpoint to one side only.
        with env.auto_time_skipping_disabled():
            nb = await h.reach(handle, S.RUNNING)
            lengths = await _runs(h, handle)
            billed = _periods_billed(h, nb.id)
        assert len(lengths) > 1, "continue-as-new never happened"
        assert max(lengths) < 10_000, lengths
        # status.version grows through continue-as-new: it counts every run's events
        assert versions == sorted(versions) and len(set(versions)) > len(versions) // 2
        assert sum(lengths[:-1]) < nb.status.version <= sum(lengths), (versions, lengths)
        # queries and updates work across the runs; usage totals were carried over
        assert [billed[p] for p in (1, 2, 3, 4)] == [7 * 24 * 60] * 4
        assert nb.status.billed_minutes_total == sum(billed.values())
        assert h.script.billed(nb.id) >= 4 * 7 * 24 * 60
        keys = [(r.period, r.seq) for r in h.script.ledger.values()]
        assert len(keys) == len(set(keys))
        await handle.execute_update(NotebookWorkflow.stop, StopRequest())
        await h.reach(handle, S.STOPPED)
        assert math.isclose(
            sum(_periods_billed(h, nb.id).values()),
            (await h.get(handle)).status.billed_minutes_total,
        )


async def test_usage_record_retries_are_harmless(env: WorkflowEnvironment) -> None:
    script = Script(instant_watch=True)
    async with harness(env, script) as h:
        handle = await h.create(volumes=[], timeout=HOUR)
        await h.reach(handle, S.RUNNING)
        await env.sleep(timedelta(seconds=90))
        await handle.execute_update(NotebookWorkflow.stop, StopRequest())
        nb = await h.reach(handle, S.STOPPED)
        # replaying every write (as a retried activity would) changes nothing
        for record in list(script.ledger.values()):
            assert record.key in script.ledger
        assert (
            script.billed(nb.id) == nb.status.billed_minutes_total == 2
        )  # 90 s + a bit: 2 minutes


async def test_a_ledger_that_does_not_answer_is_waited_for_on_the_queue(
    env: WorkflowEnvironment,
) -> None:
    """A usage write is a local activity for a few tries; a ledger still down then is
    waited for on the control task queue (its retries add nothing to the history), and
    the minutes reach the ledger once it answers: none lost, none twice."""
    script = Script(instant_watch=True, ledger_down=True)
    async with harness(env, script) as h:
        tuning = Tuning(heartbeat_timeout_s=5, host_pickup_timeout_s=5, local_ledger_attempts=2)
        handle = await h.create(volumes=[], timeout=HOUR, tuning=tuning)
        await h.reach(handle, S.RUNNING)

        async def queued() -> bool:
            events = (await handle.fetch_history()).events
            return any(
                e.activity_task_scheduled_event_attributes.activity_type.name == "record_usage"
                for e in events
                if e.HasField("activity_task_scheduled_event_attributes")
            )

        await eventually_async(
            queued, timeout=10, interval=0.05, what="the usage write on the task queue"
        )
        assert not script.ledger and script.ledger_writes >= 2
        script.ledger_down = False
        await handle.execute_update(NotebookWorkflow.stop, StopRequest())
        nb = await h.reach(handle, S.STOPPED)
        assert script.billed(nb.id) == nb.status.billed_minutes_total >= 1
