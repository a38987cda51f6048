"""Capacity from the fleet workflow, and the ledger's usage records: the notebook's calls
to the control plane (local activities, or the control task queue)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, CancelledError, FailureError

with workflow.unsafe.imports_passed_through():
    from domain import activity_names as A
    from domain import codes
    from domain.billing import UsageRecord
    from domain.fleet import Allocation, CapacityRequest, Decision, queued_message
    from domain.ids import CONTROL_TASK_QUEUE
    from domain.states import NotebookState
    from domain.status import Info

from workflows.notebook.context import RunContext
from workflows.notebook.host_calls import ActivityFailed, failure_info

S = NotebookState
# Asking the fleet fails briefly while it continues as new: try again soon.
_FLEET_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=2)
)
# A ledger that is down is waited for, however long: a record is never dropped.
_LEDGER_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=30))


async def capacity(nb: RunContext) -> Allocation:
    """Capacity from the fleet: granted at once, or after waiting in its queue (a stop
    or delete while queued cancels the wait; the teardown gives the place back)."""
    res = nb.inp.spec.resources
    nb.m.capacity_held = True  # from the moment we ask: a release is always safe
    nb.grant = None
    try:
        # Local: one short Update to the fleet, without a round trip through the
        # server's activity queue (it is most of the control plane's start latency).
        decision: Decision = await workflow.execute_local_activity(
            A.REQUEST_CAPACITY,
            CapacityRequest(
                notebook=workflow.info().workflow_id,
                project=nb.inp.project,
                flavor=res.flavor,
                units=res.units,
            ),
            result_type=Decision,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=_FLEET_RETRY,
        )
    except ActivityError as err:
        if isinstance(err.cause, CancelledError):
            raise asyncio.CancelledError() from err
        raise ActivityFailed(S.ERROR, failure_info(err, codes.LAUNCH_FAILED)) from err
    if decision.outcome == "refused":
        code = decision.code or codes.NO_CAPACITY
        raise ActivityFailed(S.FAILED, Info(code=code, message=decision.message))
    if decision.outcome == "granted" and decision.allocation is not None:
        return decision.allocation
    nb.set_info(
        Info(code=codes.QUEUED, message=queued_message(decision.position, decision.waiting_for))
    )
    await workflow.wait_condition(lambda: nb.grant is not None)
    assert nb.grant is not None
    return nb.grant


def take_grant(nb: RunContext, allocation: Allocation) -> None:
    """The fleet's signal: the capacity this notebook waits for is its."""
    if nb.m.capacity_held and allocation.notebook == workflow.info().workflow_id:
        nb.grant = allocation


async def release_capacity(nb: RunContext) -> None:
    """Give the fleet back what this notebook holds or waits for; a no-op if nothing."""
    if not nb.m.capacity_held:
        return
    await workflow.execute_local_activity(
        A.RELEASE_CAPACITY,
        workflow.info().workflow_id,
        start_to_close_timeout=timedelta(seconds=30),
        retry_policy=_FLEET_RETRY,
    )
    nb.m.capacity_held = False
    nb.m.allocation = None
    nb.grant = None


async def flush_usage(nb: RunContext) -> None:
    """Write decided records to the ledger, in order; a retried write is a no-op."""
    b = nb.billing
    while b.pending:
        try:
            attempts = nb.inp.tuning.local_ledger_attempts
            if not (nb.usage_local and await _record_locally(b.pending[0], attempts)):
                await workflow.execute_activity(
                    A.RECORD_USAGE,
                    b.pending[0],
                    task_queue=CONTROL_TASK_QUEUE,
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=_LEDGER_RETRY,
                )
        except ActivityError as err:
            # A stop cancelled the RUNNING phase during the write: the record stays
            # pending (the write is idempotent) and is written after the phase.
            if nb.stop_wins and isinstance(err.cause, CancelledError):
                raise asyncio.CancelledError() from err
            raise
        b.pending.pop(0)


async def _record_locally(record: UsageRecord, attempts: int) -> bool:
    """The write as a local activity: the ledger is the control worker's own, so no trip
    through a task queue (a worker lost mid-write leaves the workflow task to another,
    which writes again: a no-op by the record's key). False when the ledger has not
    answered in ``attempts`` tries: the write then waits on the control task queue, whose
    retries add nothing to the history (a local activity's keep its workflow task open,
    and the SDK heartbeats that task: three events every few seconds)."""
    try:
        await workflow.execute_local_activity(
            A.RECORD_USAGE,
            record,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(maximum_attempts=attempts),
        )
    except FailureError as err:
        # A local activity's failure comes as the activity's own error, not always
        # wrapped in an ActivityError as a task queue's does.
        cause = err.cause if isinstance(err, ActivityError) else err
        if isinstance(cause, CancelledError):
            raise asyncio.CancelledError() from err  # a stop cancelled the phase
        return False
    return True
