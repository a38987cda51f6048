"""What happens to a notebook without a command, each read in the state table
(``domain.lifecycle``): the editor's exit, the timeout, a failed start or watch, a lost
host, a save that failed for good, and a workflow closed from outside."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from domain import codes
    from domain.left_data import sync_failed_message
    from domain.lifecycle import Event, exit_event, react
    from domain.messages import ClosedRun, Ending, WatchResult
    from domain.states import IDLE_STATES, NotebookState
    from domain.status import HostData, Info

from workflows.notebook.context import RunContext

S = NotebookState


def ready(nb: RunContext) -> None:
    reaction = react(nb.status.state, Event.READY)
    if reaction.now is not None:
        nb.open_period()
    nb.apply(reaction, Info(message="the editor is answering"))


def start_failed(nb: RunContext, state: NotebookState, info: Info) -> None:
    """A start that failed: the state of the failure (FAILED, the user's; ERROR, ours)."""
    event = Event.START_FAILED_USER if state == S.FAILED else Event.START_FAILED_PLATFORM
    nb.apply(react(nb.status.state, event), info)


def watch_failed(nb: RunContext, info: Info) -> None:
    """Ours, not the user's: tear down and say so rather than fail the workflow."""
    nb.apply(react(nb.status.state, Event.WATCH_FAILED), info)


def exited(nb: RunContext, result: WatchResult) -> None:
    if result.exit_code == 0:
        info = Info(code=codes.EXITED, message="the editor exited normally (exit code 0)")
    elif result.exit_code is None:
        info = Info(code=codes.EXITED, message="the editor container disappeared")
    else:
        info = Info(
            code=codes.exit_code(result.exit_code),
            message=f"the editor exited with code {result.exit_code}",
        )
    nb.apply(react(nb.status.state, exit_event(result.exit_code)), info)


def timed_out(nb: RunContext) -> None:
    run = nb.m.run
    assert run is not None
    restart = run.auto_restart
    info = Info(
        code=codes.TIMEOUT,
        message=f"RUNNING for its timeout of {run.timeout_s}s: stopped automatically"
        + ("; it restarts (auto-restart)" if restart else ""),
    )
    event = Event.TIMEOUT_RESTART if restart else Event.TIMEOUT
    nb.apply(react(nb.status.state, event), info)


def host_lost(nb: RunContext, message: str) -> None:
    # Billing ends at the last heartbeat that saw the container running (or the last
    # checkpoint), not when the loss was noticed.
    b = nb.billing
    if b.started_at is not None:
        seen = b.last_seen_running_at or b.started_at
        nb.bill_until(min(seen, workflow.now()), final=True)
    # Nothing can be pushed from a lost host: the last checkpoint is what remains (I2),
    # and what the host still holds is pushed if it comes back before a start.
    if (
        nb.keeps_data
        and nb.m.container_launched
        and nb.status.host
        and nb.status.left_on_host is None
    ):
        nb.status.left_on_host = HostData(
            host=nb.status.host,
            reason="the host was lost while the notebook ran on it",
            since=workflow.now(),
        )
    nb.m.task_queue = None
    if nb.m.container_launched:
        nb.status.last_stopped_at = workflow.now()
    nb.status.container = None
    nb.status.endpoint = None
    nb.apply(
        react(nb.effective_state(), Event.HOST_LOST),
        Info(code=codes.HOST_LOST, message=message),
    )


def save_failed(nb: RunContext, result: str, *, deleting: bool) -> None:
    """What could not be saved stays on the host, listed: FAILED SYNC_FAILED."""
    left = nb.status.left_on_host
    assert left is not None
    message = sync_failed_message(left, unreachable=result == "unreachable", deleting=deleting)
    nb.m.ending = None
    nb.apply(
        react(nb.effective_state(), Event.SAVE_FAILED),
        Info(code=codes.SYNC_FAILED, message=message),
    )


def taken_over(nb: RunContext, closed: ClosedRun) -> None:
    """Take over from a run closed from outside (see temporal_client/revival.py): bill it up to
    when it closed, stop serving it, and save and remove what it left running; the
    notebook then waits in ERROR WORKFLOW_CLOSED for a start or a delete. Called from
    __init__, before any update handler sees the state (a DELETE that revived the
    notebook is applied to this state, not to the closed run's)."""
    nb.m.forget_intents()
    how = closed.status.lower().replace("_", " ")
    prior = nb.status.state
    said = (
        f"its workflow was {how} from outside the platform at "
        f"{closed.closed_at.isoformat(timespec='seconds')} while it was {prior.value}"
    )
    nb.bill_until(closed.closed_at, final=True)
    nb.status.endpoint = None  # the gateway stops serving it now
    nb.m.updated_at = closed.closed_at
    reaction = react(prior, Event.WORKFLOW_CLOSED, code=nb.status.info.code)
    # No transition yet (no search attributes in __init__): run() publishes this state.
    if prior in IDLE_STATES:
        if reaction.now is not None:
            nb.status.state = reaction.now
            nb.status.info = Info(code=codes.WORKFLOW_CLOSED, message=f"{said}; start or delete it")
        return
    assert reaction.now is not None and reaction.then is not None
    nb.m.ending = Ending(
        state=reaction.then,
        info=Info(
            code=codes.WORKFLOW_CLOSED,
            message=f"{said}; what it left running was saved and removed: start or delete it",
        ),
    )
    nb.status.state = reaction.now
    nb.status.info = Info(
        code=codes.WORKFLOW_CLOSED, message=f"{said}; saving and removing what it left"
    )
