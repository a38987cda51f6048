"""One notebook, one durable workflow: the state machine of docs/lifecycle.md.

``run()`` dispatches by state: STARTING and RUNNING are phases that a stop or delete
cancels, STOPPING and DELETING the teardown, the rest a wait for a command. Commands are
Updates whose validators read the command table (a rejection is the API's 409); what
they and the events do is read in ``domain.lifecycle``'s tables. All the workflow keeps
is one model (``Carry``), handed whole to the next run at continue-as-new.
"""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from domain import codes, protocol
    from domain import search_attributes as sa
    from domain.access import reaches
    from domain.datasync import InvalidField, datasync_targets
    from domain.fleet import Allocation
    from domain.left_data import describe_left
    from domain.lifecycle import command_reaction, conflict_message, outcome
    from domain.messages import (
        DataSyncCommand,
        DeleteRequest,
        Issued,
        LabelsCommand,
        NotebookInput,
        PatchCommand,
        PatchRequest,
        RotateTokenRequest,
        StartRequest,
        StopRequest,
    )
    from domain.spec import NotebookSpec
    from domain.states import IDLE_STATES, Command, NotebookState, Outcome
    from domain.status import Info, Notebook
    from workflows import patches

from workflows.notebook import events
from workflows.notebook.context import RunContext
from workflows.notebook.fleet_calls import flush_usage, release_capacity, take_grant
from workflows.notebook.running import running
from workflows.notebook.start import starting
from workflows.notebook.syncs import queue_datasync
from workflows.notebook.teardown import teardown

S = NotebookState


def _invalid(field: str, message: str) -> ApplicationError:
    """Bad input to an update: the API answers 422 naming ``field``."""
    return ApplicationError(f"{field}: {message}", field, type=protocol.INVALID, non_retryable=True)


def _conflict(message: str) -> ApplicationError:
    return ApplicationError(message, type=protocol.CONFLICT, non_retryable=True)


@workflow.defn(name=protocol.NOTEBOOK_WORKFLOW_TYPE)
class NotebookWorkflow:
    @workflow.init
    def __init__(self, inp: NotebookInput) -> None:
        self._nb = RunContext(inp)
        if self._nb.closed is not None:
            events.taken_over(self._nb, self._nb.closed)

    # ---------------------------------------------------------------- main loop

    @workflow.run
    async def run(self, inp: NotebookInput) -> Notebook:
        nb = self._nb
        nb.keeps_data = workflow.patched(patches.KEEP_UNSAVED_DATA)
        nb.stop_wins = workflow.patched(patches.STOP_WINS_RACES)
        nb.launch_waits = workflow.patched(patches.LAUNCH_WAITS_READY)
        nb.usage_local = workflow.patched(patches.USAGE_LOCAL)
        if nb.closed is not None:
            # Search attributes and details say what __init__ decided (or a handler since).
            nb.transition(nb.status.state, nb.status.info)
        while True:
            await flush_usage(nb)
            state = nb.status.state
            if state == S.STARTING:
                await self._run_phase(starting(nb))
            elif state == S.RUNNING:
                await self._run_phase(running(nb))
            elif state in (S.STOPPING, S.DELETING):
                await teardown(nb)
                if nb.status.state == S.DELETED:
                    await release_capacity(nb)
                    await flush_usage(nb)
                    await workflow.wait_condition(workflow.all_handlers_finished)
                    return nb.snapshot()
            else:
                # ERROR after a lost host: its capacity is no longer ours (I5).
                await release_capacity(nb)
                await workflow.wait_condition(
                    lambda: nb.status.state not in IDLE_STATES or nb.history_is_long()
                )
                if nb.status.state in IDLE_STATES:
                    await workflow.wait_condition(workflow.all_handlers_finished)
                    if nb.status.state in IDLE_STATES:
                        workflow.continue_as_new(nb.carry_over())

    async def _run_phase(self, coro: Any) -> None:
        """Run a phase as a task that a stop or delete may cancel."""
        nb = self._nb
        nb.phase = asyncio.create_task(coro)
        try:
            await nb.phase
        except asyncio.CancelledError:
            # A stop or delete handler cancelled the phase and already moved the state on.
            if nb.status.state not in (S.STOPPING, S.DELETING):
                raise
        finally:
            nb.phase = None

    @workflow.signal(name=protocol.SIGNAL_CAPACITY_GRANTED)
    def _capacity_granted(self, allocation: Allocation) -> None:
        take_grant(self._nb, allocation)

    # -------------------------------------------------------------------- reads

    @workflow.query(name=protocol.QUERY_GET)
    def get(self) -> Notebook:
        return self._nb.snapshot()

    @workflow.query(name=protocol.QUERY_CARRY)
    def carry(self) -> NotebookInput:
        """All a run would hand to the next: what a run taking over from this one, once
        it was closed from outside, starts from (temporal_client/revival.py)."""
        return self._nb.carry_over()

    # ---------------------------------------------------------------- commands

    @workflow.update(name=protocol.UPDATE_START)
    def start(self, req: StartRequest) -> Notebook:
        nb = self._nb
        self._issued(req)
        nb.apply(command_reaction(nb.status.state, Command.START), Info(message="start requested"))
        return nb.snapshot()

    @start.validator
    def _validate_start(self, req: StartRequest) -> None:
        self._check_reach(req)
        self._check(Command.START)

    @workflow.update(name=protocol.UPDATE_STOP)
    def stop(self, req: StopRequest) -> Notebook:
        nb = self._nb
        self._issued(req)
        if self._check(Command.STOP) == Outcome.PROCEED:
            nb.apply(
                command_reaction(nb.status.state, Command.STOP),
                Info(message="stop requested: saving data"),
                ending=Info(code=codes.STOPPED_BY_USER, message="stopped by user"),
            )
            nb.cancel_phase()
        return nb.snapshot()

    @stop.validator
    def _validate_stop(self, req: StopRequest) -> None:
        self._check_reach(req)
        self._check(Command.STOP)

    @workflow.update(name=protocol.UPDATE_DELETE)
    def delete(self, req: DeleteRequest) -> Notebook:
        nb = self._nb
        self._issued(req)
        if self._check(Command.DELETE) == Outcome.PROCEED:
            nb.m.keep_workspace = req.keep_workspace
            nb.m.force_delete = req.force
            left = nb.status.left_on_host
            if req.force and left is not None and nb.keeps_data:
                nb.set_info(Info(message=f"delete forced: dropping {describe_left(left)}"))
            reaction = command_reaction(nb.status.state, Command.DELETE)
            if reaction.now is None:
                nb.m.delete_after_stop = True  # DELETING once stopped
                nb.set_info(Info(message="delete requested: deleting once stopped"))
            else:
                forced = nb.status.info.message if req.force and left else ""
                nb.apply(reaction, Info(message=forced or "delete requested"))
                nb.cancel_phase()
        return nb.snapshot()

    @delete.validator
    def _validate_delete(self, req: DeleteRequest) -> None:
        self._check_reach(req)
        self._check(Command.DELETE)

    @workflow.update(name=protocol.UPDATE_DATASYNC)
    def datasync(self, req: DataSyncCommand) -> Notebook:
        """Queue a sync while RUNNING; its progress shows in ``status.datasyncs``. For a
        notebook FAILED with SYNC_FAILED, a push tries again to save what it left."""
        nb = self._nb
        self._issued(req)
        if self._retries_save(req):
            nb.m.retry_save = True
            nb.transition(
                S.STOPPING, Info(message="datasync push: saving the data left on the host")
            )
            return nb.snapshot()
        queue_datasync(nb, req.direction, req.volume, self._datasync_targets(req))
        return nb.snapshot()

    @datasync.validator
    def _validate_datasync(self, req: DataSyncCommand) -> None:
        self._check_reach(req)
        if self._retries_save(req):
            return
        state = self._nb.status.state
        if state != S.RUNNING:
            raise _conflict(f"a datasync needs a RUNNING notebook; this one is {state.value}")
        self._datasync_targets(req)

    def _retries_save(self, req: DataSyncCommand) -> bool:
        st = self._nb.status
        return (
            self._nb.keeps_data
            and st.state == S.FAILED
            and st.info.code == codes.SYNC_FAILED
            and st.left_on_host is not None
            and req.direction == "push"
        )

    def _datasync_targets(self, req: DataSyncCommand) -> list[str]:
        try:
            return datasync_targets(self._nb.inp.spec.volumes, req.direction, req.volume)
        except InvalidField as bad:
            raise _invalid(bad.field, bad.message) from None

    @workflow.update(name=protocol.UPDATE_PATCH)
    def patch(self, req: PatchCommand) -> Notebook:
        """Change the timeout or auto-restart; the running run keeps what it started with."""
        nb = self._nb
        self._issued(req)
        changes = req.model_dump(include=set(PatchRequest.model_fields), exclude_none=True)
        self._set_spec(nb.inp.spec.model_copy(update=changes))
        return nb.snapshot()

    @patch.validator
    def _validate_patch(self, req: PatchCommand) -> None:
        self._check_reach(req)
        self._check_changeable()

    @workflow.update(name=protocol.UPDATE_SET_LABELS)
    def set_labels(self, req: LabelsCommand) -> Notebook:
        """Replace the labels; list filters and the Web UI see them at once."""
        nb = self._nb
        self._issued(req)
        self._set_spec(nb.inp.spec.model_copy(update={"labels": dict(req.labels)}))
        workflow.upsert_search_attributes([sa.LABELS.value_set(sa.label_terms(req.labels))])
        return nb.snapshot()

    @set_labels.validator
    def _validate_set_labels(self, req: LabelsCommand) -> None:
        self._check_reach(req)
        self._check_changeable()
        if not reaches(req.reach, req.labels):
            raise ApplicationError(
                "the new labels would take the notebook out of the token's reach "
                f"(it is limited to {req.reach})",
                "labels",
                type=protocol.FORBIDDEN,
                non_retryable=True,
            )

    @workflow.update(name=protocol.UPDATE_ROTATE_TOKEN)
    def rotate_token(self, req: RotateTokenRequest) -> Notebook:
        """A new link token: the old one, and every gateway session opened with it, stop
        working; the editor keeps running."""
        nb = self._nb
        self._issued(req)
        nb.status.token_generation += 1
        nb.m.updated_at = workflow.now()
        return nb.snapshot()

    @rotate_token.validator
    def _validate_rotate_token(self, req: RotateTokenRequest) -> None:
        self._check_reach(req)
        self._check_changeable()

    # ----------------------------------------------------------------- checks

    def _set_spec(self, spec: NotebookSpec) -> None:
        nb = self._nb
        nb.inp = nb.inp.model_copy(update={"spec": spec})
        nb.m.updated_at = workflow.now()

    def _check(self, command: Command) -> Outcome:
        st = self._nb.status
        result = outcome(st.state, command)
        if result == Outcome.CONFLICT:
            message = conflict_message(st.state, command)
            if st.info.code == codes.SYNC_FAILED:
                message += (
                    "; its unsaved data is saved by a start or a datasync push, or dropped "
                    "by DELETE ?force=true"
                )
            raise _conflict(message)
        if result == Outcome.GONE:
            raise ApplicationError(
                "the notebook was deleted", type=protocol.GONE, non_retryable=True
            )
        return result

    def _check_reach(self, req: Issued) -> None:
        """A token limited to some labels sees nothing else: as if it did not exist."""
        inp = self._nb.inp
        if not reaches(req.reach, inp.spec.labels):
            raise ApplicationError(
                f"notebook {inp.notebook_id} not found in project {inp.project}",
                type=protocol.GONE,
                non_retryable=True,
            )

    def _check_changeable(self) -> None:
        state = self._nb.status.state
        if state in (S.DELETING, S.DELETED):
            raise _conflict(f"cannot change a notebook that is {state.value}")

    def _issued(self, req: Issued) -> None:
        if req.by is not None:
            self._nb.status.last_command_by = req.by
