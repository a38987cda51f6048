"""One notebook, one durable workflow: the state machine of ``shared/spec/lifecycle.md``.

The workflow owns the notebook's status. Commands arrive as Updates whose validators apply
the command table (a rejection is the API's 409); reads are Queries. Host work runs on the
host's own task queue, so a dead host shows up as a schedule-to-start timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    TimeoutError,
    TimeoutType,
)

with workflow.unsafe.imports_passed_through():
    from domain import activity_names as A
    from domain import codes
    from domain import search_attributes as sa
    from domain.access import reaches
    from domain.fleet import Allocation, CapacityRequest, Decision
    from domain.gateway import ready_path
    from domain.ids import CONTROL_TASK_QUEUE, host_task_queue
    from domain.messages import (
        BillingState,
        Carry,
        ClosedRun,
        DataSyncCommand,
        DataSyncRequest,
        DeleteRequest,
        DeleteWorkspaceInput,
        Issued,
        LabelsCommand,
        LaunchInput,
        LaunchResult,
        NotebookInput,
        NotebookRef,
        PatchCommand,
        PatchRequest,
        ReadyInput,
        RotateTokenRequest,
        RunSettings,
        StartRequest,
        StopContainerInput,
        StopContainerResult,
        StopRequest,
        SyncResult,
        VolumeSyncInput,
        WatchInput,
        WatchResult,
        WorkspaceSyncInput,
    )
    from domain.metering import advance, open_period
    from domain.states import (
        IDLE_STATES,
        Command,
        NotebookState,
        Outcome,
        conflict_message,
        outcome,
    )
    from domain.status import (
        SYNC_COUNTERS,
        DataSync,
        HostData,
        Info,
        Notebook,
        SyncProgress,
        SyncState,
        UnsavedItem,
        initial_status,
    )
    from workflows import patches

S = NotebookState
WAIT = workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED
WORKSPACE = "workspace"
# Finished datasyncs kept in the status (queued and running ones are always kept).
KEEP_DATASYNCS = 10
# Asking the fleet fails briefly while it continues as new: try again soon.
_FLEET_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=2)
)


class _HostLost(Exception):
    pass


class _ActivityFailed(Exception):
    def __init__(self, state: NotebookState, info: Info, details: dict | None = None) -> None:
        super().__init__(info.message)
        self.state = state
        self.info = info
        self.details = details or {}


def _causes(err: BaseException) -> Iterator[BaseException]:
    """The error and what caused it, down the chain (Temporal's ``cause`` included)."""
    cause: BaseException | None = err
    while cause is not None:
        yield cause
        cause = cause.__cause__ or getattr(cause, "cause", None)


def _failure_details(err: BaseException) -> dict:
    """The first dict an ApplicationError carries (a push says what it left behind)."""
    for cause in _causes(err):
        if isinstance(cause, ApplicationError):
            return next((d for d in cause.details if isinstance(d, dict)), {})
    return {}


def _size(n: int | None) -> str:
    if n is None:
        return "size unknown"
    if n < 1024:
        return f"{n} bytes"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"


def describe_left(left: HostData) -> str:
    """What a notebook left on a host, in words: the API's messages and the delete's answer."""
    if not left.items:
        return f"whatever the run lost with host {left.host} holds (unknown)"
    parts = [
        f"{i.target} ({i.files if i.files is not None else '?'} files, {_size(i.bytes)}"
        + (f", at {i.path}" if i.path else "")
        + ")"
        for i in left.items
    ]
    return f"on host {left.host}: " + "; ".join(parts)


async def _cancel_and_wait(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _invalid(field: str, message: str) -> ApplicationError:
    """Bad input to an update: the API answers 422 naming ``field``."""
    return ApplicationError(f"{field}: {message}", field, type="INVALID", non_retryable=True)


def _is_host_lost(err: BaseException) -> bool:
    """A host activity nobody picked up in time, or whose heartbeats stopped for good."""
    cause = err.cause if isinstance(err, ActivityError) else None
    return isinstance(cause, TimeoutError) and cause.type == TimeoutType.SCHEDULE_TO_START


def _failure_info(err: BaseException, default_code: str) -> Info:
    """Turn an activity failure into a code and a message a person can act on."""
    for cause in _causes(err):
        if isinstance(cause, ApplicationError) and cause.type:
            return Info(code=cause.type, message=cause.message)
    return Info(code=default_code, message=str(err.__cause__ or err))


@workflow.defn(name="Notebook")
class NotebookWorkflow:
    @workflow.init
    def __init__(self, inp: NotebookInput) -> None:
        # A run taking over from one closed from outside; never carried further.
        self._closed: ClosedRun | None = inp.closed
        if inp.closed is not None:
            inp = inp.model_copy(update={"closed": None})
        self._inp = inp
        self._ref = NotebookRef(project=inp.project, notebook_id=inp.notebook_id)
        # Set in run(): whether this run keeps unsaved data (patches.KEEP_UNSAVED_DATA).
        self._keeps_data = False
        self._stop_wins = False  # patches.STOP_WINS_RACES
        self._force_delete = False
        self._retry_save = False  # a datasync push of a SYNC_FAILED notebook asked for it
        self._dropped = ""  # what a forced delete dropped
        carry = inp.carry
        self._status = carry.status if carry else initial_status(inp)
        self._updated_at = carry.updated_at if carry else inp.created_at
        self._billing = carry.billing if carry else BillingState()
        self._task_queue: str | None = carry.task_queue if carry else None
        self._container_launched = carry.container_launched if carry else False
        self._run: RunSettings | None = carry.run if carry else None
        self._phase: asyncio.Task[Any] | None = None
        # How the current run ends, decided by whoever ended it (user, editor, failure).
        self._outcome: tuple[NotebookState, Info] | None = None
        self._restart_after_stop = False
        self._delete_after_stop = False
        self._keep_workspace = False
        # Datasync ids waiting for the RUNNING phase's sync loop, in order.
        self._sync_queue: list[str] = []
        self._sync_busy = False
        self._syncs_stopping = False
        # Capacity asked of the fleet (granted or queued) and not yet given back (I5).
        self._capacity_held = carry.capacity_held if carry else False
        self._allocation: Allocation | None = carry.allocation if carry else None
        self._grant: Allocation | None = None
        if self._closed is not None:
            self._take_over(self._closed)

    # ---------------------------------------------------------------- main loop

    @workflow.run
    async def run(self, inp: NotebookInput) -> Notebook:
        self._keeps_data = workflow.patched(patches.KEEP_UNSAVED_DATA)
        self._stop_wins = workflow.patched(patches.STOP_WINS_RACES)
        if self._closed is not None:
            # Search attributes and details say what __init__ decided (or a handler since).
            self._transition(self._status.state, self._status.info)
        while True:
            await self._flush_usage()
            state = self._status.state
            if state == S.STARTING:
                await self._run_phase(self._starting())
            elif state == S.RUNNING:
                await self._run_phase(self._running())
            elif state in (S.STOPPING, S.DELETING):
                await self._teardown()
                if self._status.state == S.DELETED:
                    await self._release_capacity()
                    await self._flush_usage()
                    await workflow.wait_condition(workflow.all_handlers_finished)
                    return self._snapshot()
            else:
                # ERROR after a lost host: its capacity is no longer ours (I5).
                await self._release_capacity()
                await workflow.wait_condition(
                    lambda: self._status.state not in IDLE_STATES or self._history_is_long()
                )
                if self._status.state in IDLE_STATES:
                    await workflow.wait_condition(workflow.all_handlers_finished)
                    if self._status.state in IDLE_STATES:
                        workflow.continue_as_new(self._carry_over())

    def _take_over(self, closed: ClosedRun) -> None:
        """Take over from a run closed from outside (see worker/revival.py): bill it up to
        when it closed, stop serving it, and save and remove what it left running; the
        notebook then waits in ERROR WORKFLOW_CLOSED for a start or a delete. Called from
        __init__, before any update handler sees the state (a DELETE that revived the
        notebook is applied to this state, not to the closed run's)."""
        how = closed.status.lower().replace("_", " ")
        prior = self._status.state
        said = (
            f"its workflow was {how} from outside the platform at "
            f"{closed.closed_at.isoformat(timespec='seconds')} while it was {prior.value}"
        )
        self._bill_until(closed.closed_at, final=True)
        self._status.endpoint = None  # the gateway stops serving it now
        self._updated_at = closed.closed_at
        if prior in IDLE_STATES:
            if self._status.info.code != codes.SYNC_FAILED:  # keep what that one says
                self._status.state = S.ERROR
                self._status.info = Info(
                    code=codes.WORKFLOW_CLOSED, message=f"{said}; start or delete it"
                )
            return
        self._outcome = (
            S.ERROR,
            Info(
                code=codes.WORKFLOW_CLOSED,
                message=f"{said}; what it left running was saved and removed: start or delete it",
            ),
        )
        self._status.state = S.STOPPING
        self._status.info = Info(
            code=codes.WORKFLOW_CLOSED, message=f"{said}; saving and removing what it left"
        )

    async def _run_phase(self, coro: Any) -> None:
        """Run a phase as a task that a stop or delete may cancel."""
        self._phase = asyncio.create_task(coro)
        try:
            await self._phase
        except asyncio.CancelledError:
            # A stop or delete handler cancelled the phase and already moved the state on.
            if self._status.state not in (S.STOPPING, S.DELETING):
                raise
        finally:
            self._phase = None

    # ------------------------------------------------------------------- phases

    async def _starting(self) -> None:
        self._outcome = None
        self._restart_after_stop = False
        self._container_launched = False
        self._task_queue = None
        spec = self._inp.spec
        self._run = RunSettings(timeout_s=spec.timeout, auto_restart=spec.timeout_auto_restart)
        self._status.endpoint = None
        self._status.container = None
        if self._keeps_data and self._status.left_on_host is not None:
            # Before anything else can reuse or remove that host's directory.
            if await self._save_left_data(deleting=False) == "failed":
                self._sync_failed("failed", deleting=False)
                return
        try:
            await self._start_sequence()
        except _HostLost:
            self._host_lost("the host stopped answering while the notebook was starting")
            return
        except _ActivityFailed as failed:
            if self._status.state == S.STARTING:
                self._outcome = (failed.state, failed.info)
                self._transition(S.STOPPING, failed.info)
            return
        if self._status.state == S.STARTING:
            self._open_period()
            self._transition(S.RUNNING, Info(message="the editor is answering"))

    async def _start_sequence(self) -> None:
        allocation = await self._capacity()
        self._allocation = allocation
        self._task_queue = allocation.task_queue
        self._status.host = allocation.host
        gpus = f", GPUs {','.join(allocation.gpu_ids)}" if allocation.gpu_ids else ""
        self._set_info(Info(message=f"placed on host {allocation.host}{gpus}; pulling data"))

        await self._pull_data()

        self._set_info(Info(message="launching the editor container"))
        launch = await self._host_activity(
            A.LAUNCH_CONTAINER,
            LaunchInput(
                ref=self._ref,
                spec=self._inp.spec,
                image=self._inp.image,
                allocation=self._allocation,
            ),
            result_type=LaunchResult,
            start_to_close=timedelta(minutes=5),
            attempts=self._inp.tuning.launch_attempts,
            failure_code=codes.LAUNCH_FAILED,
        )
        self._container_launched = True
        self._status.container = launch.container
        self._status.endpoint = launch.url

        self._set_info(Info(message="waiting for the editor to answer"))
        await self._host_activity(
            A.WAIT_EDITOR_READY,
            ReadyInput(
                ref=self._ref,
                port=launch.port,
                timeout_s=self._inp.tuning.ready_timeout_s,
                path=ready_path(self._inp.spec.editor),
            ),
            result_type=None,
            start_to_close=timedelta(seconds=self._inp.tuning.ready_timeout_s + 30),
            attempts=2,
            failure_code=codes.EDITOR_NOT_READY,
        )

    async def _capacity(self) -> Allocation:
        """Capacity from the fleet: granted at once, or after waiting in its queue (a stop
        or delete while queued cancels the wait; the teardown gives the place back)."""
        res = self._inp.spec.resources
        self._capacity_held = True  # from the moment we ask: a release is always safe
        self._grant = None
        try:
            # Local: one short Update to the fleet, without a round trip through the
            # server's activity queue (it is most of the control plane's start latency).
            decision: Decision = await workflow.execute_local_activity(
                A.REQUEST_CAPACITY,
                CapacityRequest(
                    notebook=workflow.info().workflow_id,
                    project=self._inp.project,
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
            raise _ActivityFailed(S.ERROR, _failure_info(err, codes.LAUNCH_FAILED)) from err
        if decision.outcome == "refused":
            code = decision.code or codes.NO_CAPACITY
            raise _ActivityFailed(S.FAILED, Info(code=code, message=decision.message))
        if decision.outcome == "granted" and decision.allocation is not None:
            return decision.allocation
        self._set_info(
            Info(
                code=codes.QUEUED,
                message=f"queued: number {decision.position} in line for "
                f"{decision.waiting_for}; it starts as soon as a host has room",
            )
        )
        await workflow.wait_condition(lambda: self._grant is not None)
        assert self._grant is not None
        return self._grant

    @workflow.signal(name="capacity_granted")
    def _capacity_granted(self, allocation: Allocation) -> None:
        if self._capacity_held and allocation.notebook == workflow.info().workflow_id:
            self._grant = allocation

    async def _release_capacity(self) -> None:
        """Give the fleet back what this notebook holds or waits for; a no-op if nothing."""
        if not self._capacity_held:
            return
        await workflow.execute_local_activity(
            A.RELEASE_CAPACITY,
            workflow.info().workflow_id,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=_FLEET_RETRY,
        )
        self._capacity_held = False
        self._allocation = None
        self._grant = None

    async def _pull_data(self) -> None:
        """Restore the workspace and pull every volume, in parallel."""
        ws = self._status.workspace
        assert ws is not None
        # A partial restore must never be pushed over the saved copy (I1).
        ws.restored = not ws.saved
        for v in self._status.volumes:
            v.pulled = False
        jobs = []
        if ws.saved:
            jobs.append(self._restore_workspace())
        jobs.extend(self._pull_volume(i) for i in range(len(self._inp.spec.volumes)))
        await self._all_or_nothing(jobs)

    async def _all_or_nothing(self, jobs: list[Any]) -> None:
        """Run jobs concurrently; on the first failure or a cancellation, cancel the rest
        and wait for them, so nothing keeps writing while the notebook is torn down."""
        tasks = [asyncio.create_task(job) for job in jobs]
        if not tasks:
            return
        try:
            await workflow.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        except GeneratorExit:
            raise  # evicted from the worker's cache: nothing may be awaited any more
        except BaseException:
            await _cancel_and_wait(tasks)
            raise
        await _cancel_and_wait(tasks)
        errors = [t.exception() for t in tasks if not t.cancelled() and t.exception()]
        for err in errors:
            if isinstance(err, _HostLost):
                raise err
        if errors:
            # A user's data problem outranks a platform one: it is what they must fix.
            failures = sorted(
                (e for e in errors if isinstance(e, _ActivityFailed)),
                key=lambda f: f.state != S.FAILED,
            )
            raise failures[0] if failures else errors[0]

    async def _restore_workspace(self) -> None:
        ws = self._status.workspace
        assert ws is not None
        await self._sync_target(
            None,
            "pull",
            attempts=self._inp.tuning.start_sync_attempts,
            failure_code=codes.STORAGE_UNAVAILABLE,
        )
        ws.restored = True

    async def _pull_volume(self, index: int) -> None:
        await self._sync_target(
            index,
            "pull",
            attempts=self._inp.tuning.start_sync_attempts,
            failure_code=codes.STORAGE_UNAVAILABLE,
        )
        self._status.volumes[index].pulled = True
        self._status.volumes[index].repull = False

    async def _running(self) -> None:
        """Watch the container until it exits or its timeout, while a second task runs the
        syncs asked for and the periodic workspace checkpoints. A stop or delete cancels
        this phase; the syncs are cancelled (and waited for) before the teardown pushes."""
        self._syncs_stopping = False
        syncs = asyncio.create_task(self._sync_loop())
        try:
            await self._watch_loop()
        except GeneratorExit:
            raise  # evicted from the worker's cache: nothing may be awaited any more
        except BaseException:
            await self._stop_syncs(syncs)
            raise
        await self._stop_syncs(syncs)

    async def _stop_syncs(self, syncs: asyncio.Task[None]) -> None:
        # Nothing may still write to the notebook's data once the teardown starts: a
        # sync whose activity finished despite the cancel must not start another.
        self._syncs_stopping = True
        while not syncs.done():
            syncs.cancel()
            try:
                await workflow.wait([syncs])
            except asyncio.CancelledError:
                continue  # a second stop or delete: keep waiting for the syncs
        self._abandon_datasyncs()

    async def _watch_loop(self) -> None:
        b = self._billing
        assert b.started_at is not None and self._run is not None
        deadline = b.started_at + timedelta(seconds=self._run.timeout_s)
        while True:
            now = workflow.now()
            if now >= deadline:
                # The period ends at the deadline itself, not when the timer got round to it.
                self._bill_until(deadline, final=True)
                self._timed_out()
                return
            interval = min(timedelta(seconds=self._inp.tuning.checkpoint_s), deadline - now)
            planned = now + interval
            try:
                result = await self._watch(interval)
                if self._left_running():
                    return
            except _ActivityFailed as failed:
                # Ours, not the user's: tear down and say so rather than fail the workflow.
                self._outcome = (S.ERROR, failed.info)
                self._transition(S.STOPPING, failed.info)
                return
            if result is None:
                self._host_lost("the host stopped answering while the notebook was running")
                return
            if not result.running:
                self._exited(result)
                return
            # "Still running" is proof up to now: bill it, then wait out the interval (the
            # watch on a real host already did; a test's fake returns at once).
            self._bill_until(workflow.now(), final=False)
            self._publish_details()
            await self._flush_usage()
            if self._left_running():
                return
            rest = planned - workflow.now()
            if rest > timedelta(0):
                await workflow.sleep(rest)
            if self._left_running():
                return
            await self._maybe_continue_as_new()

    def _left_running(self) -> bool:
        """A stop or delete whose cancel of this phase was lost: an activity the phase
        awaited completed in the same workflow task, and Temporal's SDK gave the phase
        the result instead of the cancel. The phase ends here rather than watch on."""
        return self._stop_wins and self._status.state != S.RUNNING

    async def _watch(self, interval: timedelta) -> WatchResult | None:
        """One watch of the container; None when the host is lost."""
        failures = 0
        while True:
            try:
                return await workflow.execute_activity(
                    A.WATCH_CONTAINER,
                    WatchInput(ref=self._ref, max_s=interval.total_seconds()),
                    result_type=WatchResult,
                    task_queue=self._task_queue,
                    schedule_to_start_timeout=self._pickup_timeout(),
                    start_to_close_timeout=interval + timedelta(minutes=10),
                    heartbeat_timeout=self._heartbeat_timeout(),
                    # The workflow retries itself, to keep the last heartbeat of each attempt.
                    retry_policy=RetryPolicy(maximum_attempts=1),
                )
            except ActivityError as err:
                cause = err.cause
                if isinstance(cause, CancelledError):
                    raise asyncio.CancelledError() from err
                if isinstance(cause, TimeoutError):
                    self._note_heartbeat(cause.last_heartbeat_details)
                    if cause.type == TimeoutType.SCHEDULE_TO_START:
                        return None  # nobody took the watch again: the host is gone
                    continue  # the agent died or restarted: watch again (re-adopt)
                failures += 1
                if failures >= 5:
                    raise _ActivityFailed(
                        S.ERROR, _failure_info(err, codes.INTERNAL_ERROR)
                    ) from err
                await workflow.sleep(timedelta(seconds=2))

    def _note_heartbeat(self, details: Any) -> None:
        for detail in details or ():
            seen = detail.get("last_seen_running_at") if isinstance(detail, dict) else None
            if seen:
                at = datetime.fromisoformat(seen)
                b = self._billing
                if b.last_seen_running_at is None or at > b.last_seen_running_at:
                    b.last_seen_running_at = at

    def _timed_out(self) -> None:
        assert self._run is not None
        restart = self._run.auto_restart
        info = Info(
            code=codes.TIMEOUT,
            message=f"RUNNING for its timeout of {self._run.timeout_s}s: stopped automatically"
            + ("; it restarts (auto-restart)" if restart else ""),
        )
        self._outcome = (S.STOPPED, info)
        self._restart_after_stop = restart
        self._transition(S.STOPPING, info)

    def _exited(self, result: WatchResult) -> None:
        if result.exit_code == 0:
            info = Info(code=codes.EXITED, message="the editor exited normally (exit code 0)")
            self._outcome = (S.STOPPED, info)
        elif result.exit_code is None:
            info = Info(code=codes.EXITED, message="the editor container disappeared")
            self._outcome = (S.FAILED, info)
        else:
            info = Info(
                code=codes.exit_code(result.exit_code),
                message=f"the editor exited with code {result.exit_code}",
            )
            self._outcome = (S.FAILED, info)
        if self._status.state == S.RUNNING:
            self._transition(S.STOPPING, info)

    # ----------------------------------------------------------------- billing

    def _open_period(self) -> None:
        assert self._run is not None
        now = workflow.now()
        open_period(self._billing, now)
        self._status.last_started_at = now
        self._status.auto_stop_at = now + timedelta(seconds=self._run.timeout_s)
        self._status.auto_restart = self._run.auto_restart
        self._status.billed_minutes_current = 0

    def _bill_until(self, until: datetime, *, final: bool) -> None:
        """Bill the open period up to ``until`` (I4); see domain.metering."""
        b = self._billing
        if b.started_at is None:
            return
        advance(
            b,
            until,
            final=final,
            project=self._inp.project,
            notebook_id=self._inp.notebook_id,
            resources=self._inp.spec.resources,
        )
        self._status.billed_minutes_current = b.billed
        self._status.billed_minutes_total = b.total_minutes
        if final:
            self._status.auto_stop_at = None

    async def _flush_usage(self) -> None:
        """Write decided records to the ledger, in order; a retried write is a no-op."""
        b = self._billing
        while b.pending:
            try:
                await workflow.execute_activity(
                    A.RECORD_USAGE,
                    b.pending[0],
                    task_queue=CONTROL_TASK_QUEUE,
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=30)),
                )
            except ActivityError as err:
                # A stop cancelled the RUNNING phase during the write: the record stays
                # pending (the write is idempotent) and is written after the phase.
                if self._stop_wins and isinstance(err.cause, CancelledError):
                    raise asyncio.CancelledError() from err
                raise
            b.pending.pop(0)

    def _history_is_long(self) -> bool:
        info = workflow.info()
        return (
            info.get_current_history_length() > self._inp.tuning.max_history_events
            or info.is_continue_as_new_suggested()
        )

    async def _maybe_continue_as_new(self) -> None:
        # A sync in flight belongs to this run: continue as new once it is done.
        if self._history_is_long() and not self._sync_busy and not self._sync_queue:
            await self._flush_usage()
            await workflow.wait_condition(workflow.all_handlers_finished)
            workflow.continue_as_new(self._carry_over())

    def _deleting(self) -> bool:
        return self._status.state == S.DELETING or self._delete_after_stop

    async def _teardown(self) -> None:
        """The stop sequence: container gone, data pushed, local data removed (I2, I3).
        What a push could not save for good stays on the host, listed (SYNC_FAILED)."""
        unsaved: list[UnsavedItem] = []
        if self._task_queue is not None:
            try:
                stopped = await self._host_activity(
                    A.STOP_CONTAINER,
                    StopContainerInput(ref=self._ref, grace_s=self._inp.tuning.stop_grace_s),
                    result_type=StopContainerResult,
                    start_to_close=timedelta(seconds=self._inp.tuning.stop_grace_s + 60),
                    attempts=0,
                    failure_code=codes.INTERNAL_ERROR,
                )
                if stopped.existed:
                    self._status.last_stopped_at = workflow.now()
                # The container is gone: its capacity goes back at once, before the push (I5).
                await self._release_capacity()
                unsaved = await self._push_data()
                if unsaved:
                    self._status.left_on_host = HostData(
                        host=self._status.host or "",
                        reason="a push failed for a reason retries cannot fix",
                        since=workflow.now(),
                        items=unsaved,
                    )
                if not self._left_here():
                    await self._remove_local_data()
            except _HostLost:
                self._host_lost("the host stopped answering while the notebook was stopping")
                if not self._deleting():
                    return
            self._status.container = None
            self._status.endpoint = None
            self._task_queue = None
        await self._release_capacity()  # queued, or never launched

        left = self._status.left_on_host if self._keeps_data else None
        if self._deleting():
            if left is not None and self._force_delete:
                await self._drop_left_data(left)
            elif left is not None:
                # Unsaved data stops a delete: only ?force=true drops it.
                result = "failed" if unsaved else await self._save_left_data(deleting=True)
                if result == "unreachable" and not left.items:
                    # What a lost host may hold is not known to be anything: its last
                    # checkpoint is what remains (I2), and the delete goes on.
                    self._dropped = f"what host {left.host}, lost, may still hold"
                    self._status.left_on_host = None
                elif result != "saved":
                    self._delete_after_stop = False
                    self._sync_failed(result, deleting=True)
                    return
            self._transition(S.DELETING, Info(message="removing the notebook's data"))
            ws = self._status.workspace
            assert ws is not None
            if not self._keep_workspace:
                await workflow.execute_activity(
                    A.DELETE_WORKSPACE,
                    DeleteWorkspaceInput(ref=self._ref, bucket=ws.bucket, prefix=ws.prefix),
                    task_queue=CONTROL_TASK_QUEUE,
                    start_to_close_timeout=timedelta(minutes=30),
                    heartbeat_timeout=timedelta(seconds=20),
                    retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=1)),
                )
                ws.saved = False
            self._transition(S.DELETED, self._deleted_info())
            return

        if left is not None and (unsaved or self._retry_save or not left.items):
            # This stop's own failure; a datasync push of a SYNC_FAILED notebook; or what
            # a lost host held, which a start stopped early did not get to save.
            self._retry_save = False
            result = "failed" if unsaved else await self._save_left_data(deleting=False)
            if result == "failed" or (result == "unreachable" and left.items):
                self._sync_failed(result, deleting=False)
                return
            if result == "saved":
                self._outcome = self._outcome or (
                    S.STOPPED,
                    Info(code=codes.STOPPED_BY_USER, message="the data left on the host was saved"),
                )
        state, info = self._outcome or (S.STOPPED, Info(code=codes.STOPPED_BY_USER))
        self._transition(state, info)
        if self._restart_after_stop and state == S.STOPPED:
            self._restart_after_stop = False
            self._transition(
                S.STARTING, Info(message="restarting after its timeout (auto-restart)")
            )

    async def _remove_local_data(self, task_queue: str | None = None) -> None:
        """The notebook's directory on its host (or on ``task_queue``'s) is removed."""
        await self._host_activity(
            A.REMOVE_LOCAL_DATA,
            self._ref,
            result_type=None,
            start_to_close=timedelta(minutes=10),
            attempts=0,
            failure_code=codes.INTERNAL_ERROR,
            task_queue=task_queue,
        )

    def _left_here(self) -> bool:
        """Whether this host's directory holds data not in storage (it must stay)."""
        left = self._status.left_on_host
        return self._keeps_data and left is not None and left.host == self._status.host

    def _deleted_info(self) -> Info:
        return Info(message=f"deleted; dropped {self._dropped}" if self._dropped else "deleted")

    def _sync_failed(self, result: str, *, deleting: bool) -> None:
        left = self._status.left_on_host
        assert left is not None
        why = (
            f"host {left.host}, which holds it, does not answer"
            if result == "unreachable"
            else "; ".join(f"{i.target}: {i.error}" for i in left.items if i.error) or left.reason
        )
        then = (
            "the notebook was not deleted: DELETE ?force=true drops it"
            if deleting
            else "a start or a datasync push tries again; DELETE ?force=true drops it"
        )
        self._outcome = None
        self._transition(
            S.FAILED,
            Info(
                code=codes.SYNC_FAILED,
                message=f"could not save {describe_left(left)}: {why}. It is kept on the "
                f"host; {then}",
            ),
        )

    async def _push_data(self) -> list[UnsavedItem]:
        """Push what was fully pulled, retrying while storage is unreachable: a stop is
        never reported done before the data is in object storage (I1, I2). Returns what
        could not be saved for a reason retries cannot fix (kept on the host)."""
        if not self._container_launched:
            return []  # nothing ran, so nothing changed since the pull
        deleting_for_good = self._deleting() and not self._keep_workspace
        ws = self._status.workspace
        assert ws is not None
        unsaved: list[UnsavedItem] = []
        # One at a time: each retries on its own until storage takes it.
        for index, volume in enumerate(self._inp.spec.volumes):
            status = self._status.volumes[index]
            if volume.pushed and status.pulled:
                if status.repull:
                    # A pull while RUNNING did not finish: finish it (it keeps local
                    # changes) so a push cannot take missing files for deleted ones.
                    if item := await self._save(index, "pull"):
                        unsaved.append(item)
                        continue
                    status.repull = False
                if item := await self._save(index, "push"):
                    unsaved.append(item)
                elif deleting_for_good and self._keeps_data:
                    if item := await self._save(index, "push", preserved=True):
                        unsaved.append(item)
        if ws.restored and not deleting_for_good:
            if item := await self._save(None, "push"):
                unsaved.append(item)
        return unsaved

    async def _save(
        self,
        index: int | None,
        direction: str,
        *,
        task_queue: str | None = None,
        keep_remote: bool = False,
        preserved: bool = False,
    ) -> UnsavedItem | None:
        """One sync, retried while storage is unreachable (SYNC_RETRYING); a failure
        retries cannot fix is returned as what stays unsaved (this run keeps data), or
        retried forever like any other (a run from before the patch)."""
        what = "workspace" if index is None else f"volume {self._target_name(index)}"
        if preserved:
            what = f"preserved files of {what}"
        verb = "saving" if direction == "push" else "pulling"
        delay = 1.0
        while True:
            try:
                await self._sync_target(
                    index,
                    direction,
                    attempts=3,
                    failure_code=codes.STORAGE_UNAVAILABLE,
                    task_queue=task_queue,
                    keep_remote=keep_remote,
                    preserved=preserved,
                )
                return None
            except _ActivityFailed as failed:
                if self._keeps_data and failed.state == S.FAILED:
                    d = failed.details
                    return UnsavedItem(
                        target=self._target_name(index),
                        path=d.get("path"),
                        files=d.get("files"),
                        bytes=d.get("bytes"),
                        error=failed.info.message,
                    )
                self._set_info(
                    Info(
                        code=codes.SYNC_RETRYING,
                        message=f"{verb} {what} failed, retrying in {delay:.0f}s: "
                        f"{failed.info.message}",
                    )
                )
            await workflow.sleep(timedelta(seconds=delay))
            delay = min(delay * 2, self._inp.tuning.push_retry_max_interval_s)

    async def _save_left_data(self, *, deleting: bool) -> str:
        """Push what an earlier run left on a host (a lost host, a push that failed for
        good), adding to storage without deleting anything there; then remove it.
        "saved", "failed" (status.left_on_host lists what stays) or "unreachable" (the
        host does not answer now; the data stays listed)."""
        left = self._status.left_on_host
        assert left is not None
        queue = host_task_queue(left.host)
        self._set_info(Info(message=f"saving the data an earlier run left on host {left.host}"))
        volumes = self._inp.spec.volumes
        if left.items:
            names = {i.target for i in left.items}
            targets: list[int | None] = [
                i for i, v in enumerate(volumes) if v.mount_path in names and v.pushed
            ]
            if WORKSPACE in names:
                targets.append(None)
        else:
            targets = [i for i, v in enumerate(volumes) if v.pushed]
            targets.append(None)
        if deleting and not self._keep_workspace:
            targets = [t for t in targets if t is not None]
        unsaved: list[UnsavedItem] = []
        if not targets:
            # Nothing there is worth keeping (a delete drops the workspace): only tidy up.
            await self._drop_left_data(left)
            self._dropped = ""
            return "saved"
        try:
            for index in targets:
                item = await self._save(index, "push", task_queue=queue, keep_remote=True)
                if item is None and index is not None and deleting and not self._keep_workspace:
                    item = await self._save(index, "push", task_queue=queue, preserved=True)
                if item is not None:
                    unsaved.append(item)
            if not unsaved:
                await self._remove_local_data(queue)
        except _HostLost:
            self._set_info(
                Info(
                    message=f"host {left.host}, which holds data of an earlier run, does not "
                    "answer: it is saved once the host is back"
                )
            )
            return "unreachable"
        if unsaved:
            self._status.left_on_host = left.model_copy(
                update={"items": unsaved, "since": workflow.now()}
            )
            return "failed"
        self._status.left_on_host = None
        return "saved"

    async def _drop_left_data(self, left: HostData) -> None:
        """DELETE ?force=true: remove what could not be saved, and say so."""
        self._dropped = describe_left(left)
        try:
            await self._remove_local_data(host_task_queue(left.host))
        except _HostLost:
            self._dropped += f" (host {left.host} does not answer: its copy is not removed)"
        self._status.left_on_host = None

    # ------------------------------------------------------------------- syncs

    def _target_name(self, index: int | None) -> str:
        return WORKSPACE if index is None else self._inp.spec.volumes[index].mount_path

    async def _sync_target(
        self,
        index: int | None,
        direction: str,
        *,
        attempts: int,
        failure_code: str,
        task_queue: str | None = None,
        keep_remote: bool = False,
        preserved: bool = False,
    ) -> SyncProgress:
        """One sync of the workspace (index None) or a volume; its status shows it running
        (the API adds the live numbers from the activity's heartbeats), then its result."""
        if index is None:
            holder: Any = self._status.workspace
            activity = A.SAVE_WORKSPACE if direction == "push" else A.RESTORE_WORKSPACE
            arg: Any = self._workspace_input()
            if keep_remote:
                arg.mirror = False
            key = WORKSPACE
        else:
            holder = self._status.volumes[index]
            activity = A.PUSH_VOLUME if direction == "push" else A.PULL_VOLUME
            arg = VolumeSyncInput(ref=self._ref, index=index, volume=self._inp.spec.volumes[index])
            arg.keep_remote, arg.preserved = keep_remote, preserved
            key = f"volume-{index}"
        running = SyncProgress(
            direction=direction, state=SyncState.RUNNING, started_at=workflow.now()
        )
        holder.last_sync = running
        try:
            result: SyncResult = await self._host_activity(
                activity,
                arg,
                result_type=SyncResult,
                start_to_close=timedelta(hours=12),
                attempts=attempts,
                failure_code=failure_code,
                activity_id=f"sync:{key}:{direction}:{workflow.uuid4().hex[:8]}",
                task_queue=task_queue,
            )
        except GeneratorExit:
            raise
        except BaseException as err:
            message = (
                err.info.message
                if isinstance(err, _ActivityFailed)
                else "the host stopped answering"
                if isinstance(err, _HostLost)
                else "interrupted"
            )
            holder.last_sync = running.model_copy(
                update={"state": SyncState.FAILED, "ended_at": workflow.now(), "message": message}
            )
            raise
        holder.last_sync = result.progress
        if index is None and direction == "push":
            holder.saved = True
            holder.last_saved_at = workflow.now()
        return result.progress

    async def _sync_loop(self) -> None:
        """While RUNNING: the datasyncs asked for, in order, and the periodic workspace
        checkpoint (a normal incremental push), one at a time."""
        ws = self._status.workspace
        assert ws is not None
        every = self._inp.tuning.workspace_checkpoint_s
        if every > 0 and ws.next_checkpoint_at is None:
            ws.next_checkpoint_at = workflow.now() + timedelta(seconds=every)
        while not self._syncs_stopping:
            due = ws.next_checkpoint_at
            wait = None if due is None else due - workflow.now()
            if not self._sync_queue and (wait is None or wait > timedelta(0)):
                try:
                    await workflow.wait_condition(
                        lambda: bool(self._sync_queue) or self._syncs_stopping, timeout=wait
                    )
                except asyncio.TimeoutError:  # noqa: UP041 (TimeoutError is Temporal's here)
                    pass
            if self._syncs_stopping:
                return
            self._sync_busy = True
            try:
                if self._sync_queue:
                    await self._run_datasync(self._datasync(self._sync_queue[0]))
                    self._sync_queue.pop(0)
                elif due is not None and workflow.now() >= due:
                    try:
                        await self._sync_target(
                            None, "push", attempts=3, failure_code=codes.STORAGE_UNAVAILABLE
                        )
                    except (_ActivityFailed, _HostLost):
                        pass  # shown in workspace.last_sync; the next checkpoint tries again
                    ws.next_checkpoint_at = workflow.now() + timedelta(seconds=every)
            finally:
                self._sync_busy = False

    def _datasync(self, sync_id: str) -> DataSync:
        return next(d for d in self._status.datasyncs if d.id == sync_id)

    async def _run_datasync(self, job: DataSync) -> None:
        job.state = SyncState.RUNNING
        job.started_at = workflow.now()
        job.message = ""
        problems: list[str] = []
        for target in job.targets:
            index = None if target == WORKSPACE else self._volume_index(target)
            job.current = target
            try:
                progress = await self._sync_target(
                    index, job.direction, attempts=3, failure_code=codes.STORAGE_UNAVAILABLE
                )
            except _ActivityFailed as failed:
                if index is not None and job.direction == "pull":
                    self._status.volumes[index].repull = True
                problems.append(f"{target}: {failed.info.message}")
                continue
            except _HostLost:
                problems.append(f"{target}: the host stopped answering")
                break
            finally:
                job.current = None
            for name in SYNC_COUNTERS:
                setattr(job, name, getattr(job, name) + getattr(progress, name))
            if index is not None and job.direction == "pull":
                self._status.volumes[index].repull = False
        job.state = SyncState.FAILED if problems else SyncState.DONE
        job.ended_at = workflow.now()
        job.message = "; ".join(problems)
        self._trim_datasyncs()

    def _abandon_datasyncs(self) -> None:
        """The notebook left RUNNING: what was asked for and not done will not be."""
        for job in self._status.datasyncs:
            if job.state in (SyncState.QUEUED, SyncState.RUNNING):
                if job.state == SyncState.RUNNING and job.direction == "pull" and job.current:
                    if job.current != WORKSPACE:
                        self._status.volumes[self._volume_index(job.current)].repull = True
                job.state = SyncState.FAILED
                job.current = None
                job.ended_at = workflow.now()
                job.message = (
                    "interrupted: the notebook left RUNNING (its stop saves every rw and "
                    "rwd volume and the workspace)"
                )
        self._sync_queue.clear()
        ws = self._status.workspace
        if ws is not None and self._status.state != S.RUNNING:
            ws.next_checkpoint_at = None  # still RUNNING: a continue-as-new keeps the schedule

    def _trim_datasyncs(self) -> None:
        jobs = self._status.datasyncs
        finished = [j for j in jobs if j.state in (SyncState.DONE, SyncState.FAILED)]
        drop = {j.id for j in finished[: max(0, len(finished) - KEEP_DATASYNCS)]}
        self._status.datasyncs = [j for j in jobs if j.id not in drop]

    def _volume_index(self, mount_path: str) -> int:
        return next(i for i, v in enumerate(self._inp.spec.volumes) if v.mount_path == mount_path)

    def _datasync_targets(self, req: DataSyncRequest) -> list[str]:
        """What a datasync covers, or an INVALID error naming the field (the API's 422)."""
        volumes = self._inp.spec.volumes
        if req.volume is None:
            if req.direction == "pull":
                targets = [v.mount_path for v in volumes]
                if not targets:
                    raise _invalid("volume", "the notebook has no volumes to pull")
                return targets
            return [v.mount_path for v in volumes if v.pushed] + [WORKSPACE]
        wanted = req.volume.rstrip("/") or req.volume
        if wanted in (WORKSPACE, "/workspace"):
            if req.direction == "pull":
                raise _invalid(
                    "volume",
                    "the workspace is restored at start only; pull a volume, or push the workspace",
                )
            return [WORKSPACE]
        match = next((v for v in volumes if v.mount_path == wanted), None)
        if match is None:
            known = ", ".join([v.mount_path for v in volumes] + [WORKSPACE])
            raise _invalid("volume", f"no volume is mounted at {req.volume!r} (known: {known})")
        if req.direction == "push" and not match.pushed:
            raise _invalid("volume", f"{match.mount_path} is read-only (ro): it is never pushed")
        return [match.mount_path]

    # ------------------------------------------------------------------ helpers

    def _workspace_input(self) -> WorkspaceSyncInput:
        ws = self._status.workspace
        assert ws is not None
        return WorkspaceSyncInput(
            ref=self._ref,
            bucket=ws.bucket,
            prefix=ws.prefix,
            exclude=[v.relative_mount for v in self._inp.spec.volumes],
            mirror=ws.saved,
        )

    def _heartbeat_timeout(self) -> timedelta:
        return timedelta(seconds=self._inp.tuning.heartbeat_timeout_s)

    def _pickup_timeout(self) -> timedelta:
        return timedelta(seconds=self._inp.tuning.host_pickup_timeout_s)

    async def _host_activity(
        self,
        name: str,
        arg: Any,
        *,
        result_type: Any,
        start_to_close: timedelta,
        attempts: int,
        failure_code: str,
        activity_id: str | None = None,
        task_queue: str | None = None,
    ) -> Any:
        """Run an activity on the notebook's host (or on ``task_queue``'s: where an earlier
        run left data); map failures to _HostLost or _ActivityFailed."""
        pickup = self._pickup_timeout()
        if task_queue is not None:
            # A host that held an earlier run may be gone for good: do not wait long.
            pickup = min(pickup, timedelta(seconds=30))
        try:
            return await workflow.execute_activity(
                name,
                arg,
                result_type=result_type,
                activity_id=activity_id,
                task_queue=task_queue or self._task_queue,
                schedule_to_start_timeout=pickup,
                start_to_close_timeout=start_to_close,
                # Every host activity heartbeats: a killed agent is noticed in seconds.
                heartbeat_timeout=self._heartbeat_timeout(),
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(seconds=1),
                    maximum_interval=timedelta(seconds=10),
                    maximum_attempts=attempts,
                    non_retryable_error_types=list(codes.USER_FAILURES | {codes.IMAGE_NOT_FOUND}),
                ),
                cancellation_type=WAIT,
            )
        except ActivityError as err:
            if _is_host_lost(err):
                raise _HostLost() from err
            if isinstance(err.cause, CancelledError):
                raise asyncio.CancelledError() from err
            info = _failure_info(err, failure_code)
            state = S.FAILED if codes.is_user_failure(info.code) else S.ERROR
            raise _ActivityFailed(state, info, _failure_details(err)) from err

    def _host_lost(self, message: str) -> None:
        # Billing ends at the last heartbeat that saw the container running (or the last
        # checkpoint), not when the loss was noticed.
        b = self._billing
        if b.started_at is not None:
            seen = b.last_seen_running_at or b.started_at
            self._bill_until(min(seen, workflow.now()), final=True)
        # Nothing can be pushed from a lost host: the last checkpoint is what remains (I2),
        # and what the host still holds is pushed if it comes back before a start.
        if (
            self._keeps_data
            and self._container_launched
            and self._status.host
            and self._status.left_on_host is None
        ):
            self._status.left_on_host = HostData(
                host=self._status.host,
                reason="the host was lost while the notebook ran on it",
                since=workflow.now(),
            )
        self._task_queue = None
        if self._container_launched:
            self._status.last_stopped_at = workflow.now()
        self._status.container = None
        self._status.endpoint = None
        if self._status.state != S.DELETING and not self._delete_after_stop:
            self._transition(S.ERROR, Info(code=codes.HOST_LOST, message=message))

    def _transition(self, state: NotebookState, info: Info) -> None:
        if self._status.state == S.RUNNING and state != S.RUNNING:
            self._bill_until(workflow.now(), final=True)
        self._status.state = state
        self._set_info(info)
        workflow.upsert_search_attributes(
            [
                sa.STATE.value_set(state.value),
                sa.HOST.value_set(self._status.host or ""),
            ]
        )
        self._publish_details()

    def _publish_details(self) -> None:
        """The Web UI's "current details": what an operator asks about a notebook."""
        st = self._status
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

    def _set_info(self, info: Info) -> None:
        self._status.info = info
        self._updated_at = workflow.now()

    def _snapshot(self) -> Notebook:
        return Notebook(
            id=self._inp.notebook_id,
            project=self._inp.project,
            created_at=self._inp.created_at,
            updated_at=self._updated_at,
            spec=self._inp.spec,
            image=self._inp.image,
            status=self._status.model_copy(deep=True),
        )

    def _carry_over(self) -> NotebookInput:
        carry = Carry(
            status=self._status,
            updated_at=self._updated_at,
            billing=self._billing,
            task_queue=self._task_queue,
            container_launched=self._container_launched,
            run=self._run,
            capacity_held=self._capacity_held,
            allocation=self._allocation,
        )
        return self._inp.model_copy(update={"carry": carry})

    def _check(self, command: Command) -> Outcome:
        result = outcome(self._status.state, command)
        if result == Outcome.CONFLICT:
            message = conflict_message(self._status.state, command)
            if self._status.info.code == codes.SYNC_FAILED:
                message += (
                    "; its unsaved data is saved by a start or a datasync push, or dropped "
                    "by DELETE ?force=true"
                )
            raise ApplicationError(message, type="CONFLICT", non_retryable=True)
        if result == Outcome.GONE:
            raise ApplicationError("the notebook was deleted", type="GONE", non_retryable=True)
        return result

    def _check_reach(self, req: Issued) -> None:
        """A token limited to some labels sees nothing else: as if it did not exist."""
        if not reaches(req.reach, self._inp.spec.labels):
            raise ApplicationError(
                f"notebook {self._inp.notebook_id} not found in project {self._inp.project}",
                type="GONE",
                non_retryable=True,
            )

    def _issued(self, req: Issued) -> None:
        if req.by is not None:
            self._status.last_command_by = req.by

    def _cancel_phase(self) -> None:
        if self._phase is not None and not self._phase.done():
            self._phase.cancel()

    # ---------------------------------------------------------- commands, reads

    @workflow.query
    def get(self) -> Notebook:
        return self._snapshot()

    @workflow.query
    def carry(self) -> NotebookInput:
        """All a run would hand to the next: what a run taking over from this one, once
        it was closed from outside, starts from (worker/revival.py)."""
        return self._carry_over()

    @workflow.update
    def start(self, req: StartRequest) -> Notebook:
        self._issued(req)
        self._transition(S.STARTING, Info(message="start requested"))
        return self._snapshot()

    @start.validator
    def _validate_start(self, req: StartRequest) -> None:
        self._check_reach(req)
        self._check(Command.START)

    @workflow.update
    def stop(self, req: StopRequest) -> Notebook:
        self._issued(req)
        if self._check(Command.STOP) == Outcome.PROCEED:
            self._outcome = (S.STOPPED, Info(code=codes.STOPPED_BY_USER, message="stopped by user"))
            self._transition(S.STOPPING, Info(message="stop requested: saving data"))
            self._cancel_phase()
        return self._snapshot()

    @stop.validator
    def _validate_stop(self, req: StopRequest) -> None:
        self._check_reach(req)
        self._check(Command.STOP)

    @workflow.update
    def patch(self, req: PatchCommand) -> Notebook:
        """Change the timeout or auto-restart; the running run keeps what it started with."""
        self._issued(req)
        changes = req.model_dump(include=set(PatchRequest.model_fields), exclude_none=True)
        spec = self._inp.spec.model_copy(update=changes)
        self._inp = self._inp.model_copy(update={"spec": spec})
        self._updated_at = workflow.now()
        return self._snapshot()

    @patch.validator
    def _validate_patch(self, req: PatchCommand) -> None:
        self._check_reach(req)
        self._check_changeable()

    def _check_changeable(self) -> None:
        if self._status.state in (S.DELETING, S.DELETED):
            raise ApplicationError(
                f"cannot change a notebook that is {self._status.state.value}",
                type="CONFLICT",
                non_retryable=True,
            )

    @workflow.update
    def datasync(self, req: DataSyncCommand) -> Notebook:
        """Queue a sync while RUNNING; its progress shows in ``status.datasyncs``. For a
        notebook FAILED with SYNC_FAILED, a push tries again to save what it left."""
        self._issued(req)
        if self._retries_save(req):
            self._retry_save = True
            self._transition(
                S.STOPPING, Info(message="datasync push: saving the data left on the host")
            )
            return self._snapshot()
        targets = self._datasync_targets(req)
        queued = next(
            (
                d
                for d in self._status.datasyncs
                if d.state == SyncState.QUEUED
                and (d.direction, d.volume) == (req.direction, req.volume)
            ),
            None,
        )
        if queued is None:  # the same request still queued covers this one
            job = DataSync(
                id=workflow.uuid4().hex[:12],
                direction=req.direction,
                volume=req.volume,
                requested_at=workflow.now(),
                targets=targets,
            )
            self._status.datasyncs.append(job)
            self._sync_queue.append(job.id)
            self._updated_at = workflow.now()
        return self._snapshot()

    @datasync.validator
    def _validate_datasync(self, req: DataSyncCommand) -> None:
        self._check_reach(req)
        if self._retries_save(req):
            return
        if self._status.state != S.RUNNING:
            raise ApplicationError(
                f"a datasync needs a RUNNING notebook; this one is {self._status.state.value}",
                type="CONFLICT",
                non_retryable=True,
            )
        self._datasync_targets(req)

    def _retries_save(self, req: DataSyncCommand) -> bool:
        return (
            self._keeps_data
            and self._status.state == S.FAILED
            and self._status.info.code == codes.SYNC_FAILED
            and self._status.left_on_host is not None
            and req.direction == "push"
        )

    @workflow.update
    def set_labels(self, req: LabelsCommand) -> Notebook:
        """Replace the labels; list filters and the Web UI see them at once."""
        self._issued(req)
        spec = self._inp.spec.model_copy(update={"labels": dict(req.labels)})
        self._inp = self._inp.model_copy(update={"spec": spec})
        workflow.upsert_search_attributes([sa.LABELS.value_set(sa.label_terms(req.labels))])
        self._updated_at = workflow.now()
        return self._snapshot()

    @set_labels.validator
    def _validate_set_labels(self, req: LabelsCommand) -> None:
        self._check_reach(req)
        self._check_changeable()
        if not reaches(req.reach, req.labels):
            raise ApplicationError(
                "the new labels would take the notebook out of the token's reach "
                f"(it is limited to {req.reach})",
                "labels",
                type="FORBIDDEN",
                non_retryable=True,
            )

    @workflow.update
    def rotate_token(self, req: RotateTokenRequest) -> Notebook:
        """A new link token: the old one, and every gateway session opened with it, stop
        working; the editor keeps running."""
        self._issued(req)
        self._status.token_generation += 1
        self._updated_at = workflow.now()
        return self._snapshot()

    @rotate_token.validator
    def _validate_rotate_token(self, req: RotateTokenRequest) -> None:
        self._check_reach(req)
        self._check_changeable()

    @workflow.update
    def delete(self, req: DeleteRequest) -> Notebook:
        self._issued(req)
        if self._check(Command.DELETE) == Outcome.PROCEED:
            self._keep_workspace = req.keep_workspace
            self._force_delete = req.force
            left = self._status.left_on_host
            if req.force and left is not None and self._keeps_data:
                self._set_info(Info(message=f"delete forced: dropping {describe_left(left)}"))
            if self._status.state == S.STOPPING:
                self._delete_after_stop = True  # DELETING once stopped
                self._set_info(Info(message="delete requested: deleting once stopped"))
            else:
                forced = self._status.info.message if self._force_delete and left else ""
                self._transition(S.DELETING, Info(message=forced or "delete requested"))
                self._cancel_phase()
        return self._snapshot()

    @delete.validator
    def _validate_delete(self, req: DeleteRequest) -> None:
        self._check_reach(req)
        self._check(Command.DELETE)
