"""What the notebook workflow's parts share: the one carried model, the run's own flags,
and the few steps every part takes (a transition, billing up to a moment)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow

from workflows.notebook import metrics

with workflow.unsafe.imports_passed_through():
    from domain import codes
    from domain import search_attributes as sa
    from domain.datasync import WORKSPACE
    from domain.fleet import Allocation
    from domain.lifecycle import Reaction
    from domain.messages import (
        BillingState,
        Carry,
        ClosedRun,
        Ending,
        NotebookInput,
        NotebookRef,
        WorkspaceSyncInput,
    )
    from domain.metering import advance, open_period
    from domain.states import NotebookState
    from domain.status import (
        TRANSITIONS_KEPT,
        Info,
        Notebook,
        NotebookStatus,
        Transition,
        initial_status,
    )

S = NotebookState


class RunContext:
    """One workflow run of one notebook. ``m`` is all that survives the run (carried
    whole through continue-as-new); the rest lives and dies with the run."""

    def __init__(self, inp: NotebookInput) -> None:
        # A run taking over from one closed from outside; never carried further.
        self.closed: ClosedRun | None = inp.closed
        carry = inp.carry
        self.inp = inp.model_copy(update={"closed": None, "carry": None})
        self.m: Carry = (
            carry.model_copy()
            if carry
            else Carry(
                status=initial_status(inp), updated_at=inp.created_at, billing=BillingState()
            )
        )
        self.ref = NotebookRef(project=inp.project, notebook_id=inp.notebook_id)
        # Set in run(): whether this run keeps unsaved data (patches.KEEP_UNSAVED_DATA)
        # and whether a stop wins its races (patches.STOP_WINS_RACES); the launch waits for
        # the editor (patches.LAUNCH_WAITS_READY); usage records are written by a local
        # activity (patches.USAGE_LOCAL).
        self.keeps_data = False
        self.stop_wins = False
        self.launch_waits = False
        self.usage_local = False
        self.phase: asyncio.Task[Any] | None = None
        self.grant: Allocation | None = None
        self.sync_busy = False
        self.syncs_stopping = False
        # Where the current start and its phase began (metrics only). A run that begins
        # STARTING (created, or continued as new) takes the start's time from its status.
        self.phase_began: tuple[str, datetime] | None = None
        self.starting_since: datetime | None = None
        last = self.m.status.transitions[-1] if self.m.status.transitions else None
        if carry is None:  # created: its first STARTING
            metrics.transition(inp.project, inp.spec.resources.flavor, S.STARTING.value, None)
            self.starting_since = inp.created_at
        elif self.m.status.state == S.STARTING and last is not None and last.state == S.STARTING:
            self.starting_since = last.at
        if self.starting_since is not None:
            self.phase_began = ("queue", self.starting_since)

    @property
    def status(self) -> NotebookStatus:
        return self.m.status

    @property
    def billing(self) -> BillingState:
        return self.m.billing

    # ------------------------------------------------------------ transitions

    def transition(self, state: NotebookState, info: Info) -> None:
        if self.status.state == S.RUNNING and state != S.RUNNING:
            self.bill_until(workflow.now(), final=True)
        changed = state != self.status.state
        self.status.state = state
        self.set_info(info)
        if changed:  # a new info in the same state is not a transition
            self.record_transition(state, info)
            self.count_transition(state, info)
        workflow.upsert_search_attributes(
            [
                sa.STATE.value_set(state.value),
                sa.HOST.value_set(self.status.host or ""),
            ]
        )
        self.publish_details()

    def count_transition(self, state: NotebookState, info: Info) -> None:
        flavor = self.inp.spec.resources.flavor
        metrics.transition(self.ref.project, flavor, state.value, info.code)
        now = workflow.now()
        if state == S.STARTING:
            self.starting_since = now
            self.phase_began = ("queue", now)
        elif state == S.RUNNING:
            self.mark_phase(None, now)
            if self.starting_since is not None:
                metrics.time_to_running(flavor, self.starting_since, now)
        else:
            self.starting_since = self.phase_began = None

    def mark_phase(self, phase: str | None, at: datetime | None = None) -> None:
        """End the start's current phase and begin ``phase`` (None: the start is over)."""
        at = at or workflow.now()
        if self.phase_began is not None:
            name, began = self.phase_began
            metrics.start_phase(self.inp.spec.resources.flavor, name, began, at)
        self.phase_began = (phase, at) if phase else None

    def record_transition(self, state: NotebookState, info: Info) -> None:
        kept = self.status.transitions[-(TRANSITIONS_KEPT - 1) :]
        self.status.transitions = [
            *kept,
            Transition(
                state=state, info=info.model_copy(), at=workflow.now(), version=self.version()
            ),
        ]

    def apply(self, reaction: Reaction, info: Info, *, ending: Info | None = None) -> None:
        """Do what the state table says: note how the stop it begins ends (``ending``,
        or ``info``), then enter its state."""
        if reaction.then is not None and reaction.then != S.DELETED:
            self.m.ending = Ending(state=reaction.then, info=ending or info)
            self.m.restart_after_stop = reaction.restart
        if reaction.now is not None:
            self.transition(reaction.now, info)

    def set_info(self, info: Info) -> None:
        self.status.info = info
        self.m.updated_at = workflow.now()

    def publish_details(self) -> None:
        """The Web UI's "current details": what an operator asks about a notebook."""
        st = self.status
        lines = [f"**{st.state.value}** {st.info.code or ''} {st.info.message}".strip()]
        if st.state == S.RUNNING and st.last_started_at and st.auto_stop_at:
            lines.append(
                f"RUNNING since {st.last_started_at.isoformat(timespec='seconds')}; "
                f"auto-stop at {st.auto_stop_at.isoformat(timespec='seconds')}"
                + (" (then restarts)" if st.auto_restart else "")
            )
        lines.append(
            f"billed: {st.billed_minutes_current} min this run (recorded so far), "
            f"{st.billed_minutes_total} min in all"
        )
        ws = st.workspace
        if ws is not None and ws.last_saved_at is not None:
            lines.append(
                f"workspace saved at {ws.last_saved_at.isoformat(timespec='seconds')}"
                + (
                    f"; next checkpoint {ws.next_checkpoint_at.isoformat(timespec='seconds')}"
                    if ws.next_checkpoint_at
                    else ""
                )
            )
        workflow.set_current_details("\n\n".join(lines))

    def cancel_phase(self) -> None:
        if self.phase is not None and not self.phase.done():
            self.phase.cancel()

    # ---------------------------------------------------------------- billing

    def open_period(self) -> None:
        run = self.m.run
        assert run is not None
        now = workflow.now()
        open_period(self.billing, now)
        self.status.last_started_at = now
        self.status.auto_stop_at = now + timedelta(seconds=run.timeout_s)
        self.status.auto_restart = run.auto_restart
        self.status.billed_minutes_current = 0

    def bill_until(self, until: datetime, *, final: bool) -> None:
        """Bill the open period up to ``until`` (I4); see domain.metering."""
        b = self.billing
        if b.started_at is None:
            return
        advance(
            b,
            until,
            final=final,
            project=self.inp.project,
            notebook_id=self.inp.notebook_id,
            resources=self.inp.spec.resources,
        )
        self.status.billed_minutes_current = b.billed
        self.status.billed_minutes_total = b.total_minutes
        if final:
            self.status.auto_stop_at = None

    # ------------------------------------------------------------------ reads

    def version(self) -> int:
        return self.m.version_base + workflow.info().get_current_history_length()

    def snapshot(self) -> Notebook:
        status = self.status.model_copy(deep=True)
        status.version = self.version()
        return Notebook(
            id=self.inp.notebook_id,
            project=self.inp.project,
            created_at=self.inp.created_at,
            updated_at=self.m.updated_at,
            spec=self.inp.spec,
            image=self.inp.image,
            status=status,
        )

    def carry_over(self) -> NotebookInput:
        carry = self.m.model_copy(update={"version_base": self.version()})
        return self.inp.model_copy(update={"carry": carry})

    def history_is_long(self) -> bool:
        info = workflow.info()
        return (
            info.get_current_history_length() > self.inp.tuning.max_history_events
            or info.is_continue_as_new_suggested()
        )

    def deleting(self) -> bool:
        return self.status.state == S.DELETING or self.m.delete_after_stop

    def effective_state(self) -> NotebookState:
        """The state the table is read in: a stop with a delete waiting behind it is
        already a delete."""
        return S.DELETING if self.m.delete_after_stop else self.status.state

    def left_here(self) -> bool:
        """Whether this host's directory holds data not in storage (it must stay)."""
        left = self.status.left_on_host
        return self.keeps_data and left is not None and left.host == self.status.host

    def target_name(self, index: int | None) -> str:
        return WORKSPACE if index is None else self.inp.spec.volumes[index].mount_path

    def volume_index(self, mount_path: str) -> int:
        return next(i for i, v in enumerate(self.inp.spec.volumes) if v.mount_path == mount_path)

    def workspace_input(self) -> WorkspaceSyncInput:
        ws = self.status.workspace
        assert ws is not None
        return WorkspaceSyncInput(
            ref=self.ref,
            bucket=ws.bucket,
            prefix=ws.prefix,
            exclude=[v.relative_mount for v in self.inp.spec.volumes],
            mirror=ws.saved,
        )

    def heartbeat_timeout(self) -> timedelta:
        return timedelta(seconds=self.inp.tuning.heartbeat_timeout_s)

    def pickup_timeout(self) -> timedelta:
        return timedelta(seconds=self.inp.tuning.host_pickup_timeout_s)


def default_ending() -> Ending:
    return Ending(state=S.STOPPED, info=Info(code=codes.STOPPED_BY_USER))
