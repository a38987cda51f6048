"""Notebooks whose workflow was closed from outside the platform (the Web UI's Terminate,
a run timeout, a workflow bug): a new run takes over from the closed run's last state,
saves and removes what it left running, and waits in ERROR WORKFLOW_CLOSED.

Alive or not is decided by describing the workflow, never by a query: a closed workflow
still answers queries, by replaying its history, as if it ran on. The closed run's last
state does come from a query (``carry``), once the description said it is closed.
Idempotent by the workflow id: two takers (the host agent that found the container, the
sweeper, the API) start one run; the others find it running."""

from __future__ import annotations

import logging
from datetime import timedelta
from enum import StrEnum

from temporalio.client import Client, WorkflowExecutionDescription, WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from domain.ids import CONTROL_TASK_QUEUE, notebook_of, workflow_id
from domain.messages import ClosedRun
from domain.protocol import MEMO_KEY, NOTEBOOK_WORKFLOW_TYPE
from temporal_client import notebook_calls

log = logging.getLogger("ainb.revival")

RPC_TIMEOUT = timedelta(seconds=10)
# Closed by something else than the workflow's own end (COMPLETED is DELETED).
CLOSED_FROM_OUTSIDE = {
    WorkflowExecutionStatus.TERMINATED,
    WorkflowExecutionStatus.TIMED_OUT,
    WorkflowExecutionStatus.FAILED,
    WorkflowExecutionStatus.CANCELED,
}


class Liveness(StrEnum):
    RUNNING = "running"
    DELETED = "deleted"  # the workflow completed: the notebook was deleted
    CLOSED = "closed"  # closed from outside: a run should take over
    MISSING = "missing"  # no such workflow (never, or past the namespace's retention)
    UNKNOWN = "unknown"  # Temporal did not answer


async def liveness(
    client: Client, wid: str
) -> tuple[Liveness, WorkflowExecutionDescription | None]:
    """How the notebook's latest run stands, with its description when there is one."""
    try:
        desc = await client.get_workflow_handle(wid).describe(rpc_timeout=RPC_TIMEOUT)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return Liveness.MISSING, None
        return Liveness.UNKNOWN, None
    if desc.status == WorkflowExecutionStatus.RUNNING:
        return Liveness.RUNNING, desc
    if desc.status in CLOSED_FROM_OUTSIDE:
        return Liveness.CLOSED, desc
    return Liveness.DELETED, desc


async def take_over(
    client: Client,
    project: str,
    notebook_id: str,
    desc: WorkflowExecutionDescription | None = None,
) -> bool:
    """Start the run that takes over from a closed one: whether a run now does (False when
    the workflow was not closed from outside, or its last state cannot be read now).
    ``desc``: the closed run's description, when the caller just asked for it."""
    wid = workflow_id(project, notebook_id)
    if desc is None:
        state, desc = await liveness(client, wid)
        if state != Liveness.CLOSED:
            return False
    assert desc is not None
    handle = client.get_workflow_handle(wid, run_id=desc.run_id)
    try:
        last = await notebook_calls.carry(handle, rpc_timeout=RPC_TIMEOUT)
    except Exception as err:  # no worker to replay it now, or a run from before `carry`
        log.warning("notebook %s: cannot read its closed run's state (%s)", wid, err)
        return False
    inp = last.model_copy(
        update={
            "closed": ClosedRun(
                status=desc.status.name if desc.status else "CLOSED",
                closed_at=desc.close_time or desc.start_time,
            )
        }
    )
    memo = await desc.memo_value(MEMO_KEY, None)
    try:
        await client.start_workflow(
            NOTEBOOK_WORKFLOW_TYPE,
            inp,
            id=wid,
            task_queue=CONTROL_TASK_QUEUE,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            search_attributes=desc.typed_search_attributes,
            memo={MEMO_KEY: memo} if memo is not None else None,
            static_summary=f"{inp.spec.name} ({project}): taken over from a run closed "
            "from outside",
            rpc_timeout=RPC_TIMEOUT,
        )
    except WorkflowAlreadyStartedError:
        return True  # another taker was first
    log.warning(
        "notebook %s: its workflow was %s from outside; a new run saves and removes what it "
        "left running",
        wid,
        inp.closed.status if inp.closed else "closed",
    )
    return True


async def sweep(client: Client) -> int:
    """Take over every notebook closed from outside (what no host agent finds a container
    of still holds capacity, and its GET and DELETE must work): how many were taken over."""
    query = (
        f"WorkflowType = '{NOTEBOOK_WORKFLOW_TYPE}' AND ExecutionStatus IN "
        "('Terminated', 'TimedOut', 'Failed', 'Canceled')"
    )
    seen: set[str] = set()
    async for execution in client.list_workflows(query, rpc_timeout=RPC_TIMEOUT):
        ref = notebook_of(execution.id)
        if ref is not None and execution.id not in seen:
            seen.add(execution.id)
    taken = 0
    for wid in sorted(seen):
        # The closed run listed may be an old one: the latest run decides.
        state, desc = await liveness(client, wid)
        if state == Liveness.CLOSED:
            ref = notebook_of(wid)
            assert ref is not None
            taken += await take_over(client, *ref, desc=desc)
    return taken
