"""One notebook, one durable workflow: the state machine of ``shared/spec/lifecycle.md``.

The workflow owns the notebook's status. Commands arrive as Updates whose validators apply
the command table (a rejection is the API's 409); reads are Queries. Host work runs on the
host's own task queue, so a dead host shows up as a schedule-to-start timeout.
"""

from __future__ import annotations

import asyncio
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
    from domain.ids import CONTROL_TASK_QUEUE
    from domain.messages import (
        BillingState,
        Carry,
        DeleteRequest,
        DeleteWorkspaceInput,
        LaunchInput,
        LaunchResult,
        NotebookInput,
        NotebookRef,
        PatchRequest,
        PlaceInput,
        Placement,
        ReadyInput,
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
    from domain.spec import Volume
    from domain.states import (
        IDLE_STATES,
        Command,
        NotebookState,
        Outcome,
        conflict_message,
        outcome,
    )
    from domain.status import Info, Notebook, initial_status

S = NotebookState
WAIT = workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED


class _HostLost(Exception):
    pass


class _ActivityFailed(Exception):
    def __init__(self, state: NotebookState, info: Info) -> None:
        super().__init__(info.message)
        self.state = state
        self.info = info


def _is_host_lost(err: BaseException) -> bool:
    """A host activity nobody picked up in time, or whose heartbeats stopped for good."""
    cause = err.cause if isinstance(err, ActivityError) else None
    return isinstance(cause, TimeoutError) and cause.type == TimeoutType.SCHEDULE_TO_START


def _failure_info(err: BaseException, default_code: str) -> Info:
    """Turn an activity failure into a code and a message a person can act on."""
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, ApplicationError) and cause.type:
            return Info(code=cause.type, message=cause.message)
        cause = cause.__cause__ or getattr(cause, "cause", None)
    return Info(code=default_code, message=str(err.__cause__ or err))


@workflow.defn(name="Notebook")
class NotebookWorkflow:
    @workflow.init
    def __init__(self, inp: NotebookInput) -> None:
        self._inp = inp
        self._ref = NotebookRef(project=inp.project, notebook_id=inp.notebook_id)
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

    # ---------------------------------------------------------------- main loop

    @workflow.run
    async def run(self, inp: NotebookInput) -> Notebook:
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
                    await self._flush_usage()
                    await workflow.wait_condition(workflow.all_handlers_finished)
                    return self._snapshot()
            else:
                await workflow.wait_condition(
                    lambda: self._status.state not in IDLE_STATES or self._history_is_long()
                )
                if self._status.state in IDLE_STATES:
                    await workflow.wait_condition(workflow.all_handlers_finished)
                    if self._status.state in IDLE_STATES:
                        workflow.continue_as_new(self._carry_over())

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
        self._status.url = None
        self._status.container = None
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
        try:
            placement: Placement = await workflow.execute_activity(
                A.PLACE,
                PlaceInput(ref=self._ref, resources=self._inp.spec.resources),
                result_type=Placement,
                task_queue=CONTROL_TASK_QUEUE,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=10)),
            )
        except ActivityError as err:
            if isinstance(err.cause, CancelledError):
                raise asyncio.CancelledError() from err
            raise _ActivityFailed(S.ERROR, _failure_info(err, codes.LAUNCH_FAILED)) from err
        self._task_queue = placement.task_queue
        self._status.host = placement.host
        self._set_info(Info(message=f"placed on host {placement.host}; pulling data"))

        await self._pull_data()

        self._set_info(Info(message="launching the editor container"))
        launch = await self._host_activity(
            A.LAUNCH_CONTAINER,
            LaunchInput(ref=self._ref, spec=self._inp.spec, image=self._inp.image),
            result_type=LaunchResult,
            start_to_close=timedelta(minutes=5),
            attempts=self._inp.tuning.launch_attempts,
            failure_code=codes.LAUNCH_FAILED,
        )
        self._container_launched = True
        self._status.container = launch.container
        self._status.url = launch.url

        self._set_info(Info(message="waiting for the editor to answer"))
        await self._host_activity(
            A.WAIT_EDITOR_READY,
            ReadyInput(ref=self._ref, port=launch.port, timeout_s=self._inp.tuning.ready_timeout_s),
            result_type=None,
            start_to_close=timedelta(seconds=self._inp.tuning.ready_timeout_s + 30),
            attempts=2,
            failure_code=codes.EDITOR_NOT_READY,
        )

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
        jobs.extend(self._pull_volume(i, v) for i, v in enumerate(self._inp.spec.volumes))
        await self._all_or_nothing(jobs)

    async def _all_or_nothing(self, jobs: list[Any]) -> None:
        """Run jobs concurrently; on the first failure or a cancellation, cancel the rest
        and wait for them, so nothing keeps writing while the notebook is torn down."""
        tasks = [asyncio.create_task(job) for job in jobs]
        if not tasks:
            return
        try:
            await workflow.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
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
        result = await self._host_activity(
            A.RESTORE_WORKSPACE,
            self._workspace_input(),
            result_type=SyncResult,
            start_to_close=timedelta(hours=12),
            attempts=self._inp.tuning.start_sync_attempts,
            failure_code=codes.STORAGE_UNAVAILABLE,
        )
        ws.restored = True
        ws.last_sync = result.progress

    async def _pull_volume(self, index: int, volume: Volume) -> None:
        result = await self._host_activity(
            A.PULL_VOLUME,
            VolumeSyncInput(ref=self._ref, index=index, volume=volume),
            result_type=SyncResult,
            start_to_close=timedelta(hours=12),
            attempts=self._inp.tuning.start_sync_attempts,
            failure_code=codes.STORAGE_UNAVAILABLE,
        )
        self._status.volumes[index].pulled = True
        self._status.volumes[index].last_sync = result.progress

    async def _running(self) -> None:
        """Watch the container until it exits or its timeout; checkpoint usage on the way.
        A stop or delete cancels this phase."""
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
            rest = planned - workflow.now()
            if rest > timedelta(0):
                await workflow.sleep(rest)
            await self._maybe_continue_as_new()

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
            await workflow.execute_activity(
                A.RECORD_USAGE,
                b.pending[0],
                task_queue=CONTROL_TASK_QUEUE,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=30)),
            )
            b.pending.pop(0)

    def _history_is_long(self) -> bool:
        info = workflow.info()
        return (
            info.get_current_history_length() > self._inp.tuning.max_history_events
            or info.is_continue_as_new_suggested()
        )

    async def _maybe_continue_as_new(self) -> None:
        if self._history_is_long():
            await self._flush_usage()
            await workflow.wait_condition(workflow.all_handlers_finished)
            workflow.continue_as_new(self._carry_over())

    async def _teardown(self) -> None:
        """The stop sequence: container gone, data pushed, local data removed (I2, I3)."""
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
                await self._push_data()
                await self._host_activity(
                    A.REMOVE_LOCAL_DATA,
                    self._ref,
                    result_type=None,
                    start_to_close=timedelta(minutes=10),
                    attempts=0,
                    failure_code=codes.INTERNAL_ERROR,
                )
            except _HostLost:
                self._host_lost("the host stopped answering while the notebook was stopping")
                if not self._delete_after_stop and self._status.state != S.DELETING:
                    return
            self._status.container = None
            self._status.url = None
            self._task_queue = None

        if self._status.state == S.DELETING or self._delete_after_stop:
            self._transition(S.DELETING, Info(message="removing the notebook's data"))
            ws = self._status.workspace
            assert ws is not None
            if not self._keep_workspace:
                await workflow.execute_activity(
                    A.DELETE_WORKSPACE,
                    DeleteWorkspaceInput(ref=self._ref, bucket=ws.bucket, prefix=ws.prefix),
                    task_queue=CONTROL_TASK_QUEUE,
                    start_to_close_timeout=timedelta(minutes=30),
                    retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=1)),
                )
                ws.saved = False
            self._transition(S.DELETED, Info(message="deleted"))
            return

        state, info = self._outcome or (S.STOPPED, Info(code=codes.STOPPED_BY_USER))
        self._transition(state, info)
        if self._restart_after_stop and state == S.STOPPED:
            self._restart_after_stop = False
            self._transition(
                S.STARTING, Info(message="restarting after its timeout (auto-restart)")
            )

    async def _push_data(self) -> None:
        """Push what was fully pulled, retrying until storage takes it: a stop is never
        reported done before the data is in object storage (I1, I2)."""
        if not self._container_launched:
            return  # nothing ran, so nothing changed since the pull
        deleting_for_good = (
            self._status.state == S.DELETING or self._delete_after_stop
        ) and not self._keep_workspace
        ws = self._status.workspace
        assert ws is not None
        # One at a time: each retries on its own until storage takes it.
        for index, volume in enumerate(self._inp.spec.volumes):
            if volume.pushed and self._status.volumes[index].pulled:
                await self._push_volume(index, volume)
        if ws.restored and not deleting_for_good:
            await self._save_workspace()

    async def _push_volume(self, index: int, volume: Volume) -> None:
        result = await self._retry_forever(
            f"volume {volume.mount_path}",
            A.PUSH_VOLUME,
            VolumeSyncInput(ref=self._ref, index=index, volume=volume),
        )
        self._status.volumes[index].last_sync = result.progress

    async def _save_workspace(self) -> None:
        ws = self._status.workspace
        assert ws is not None
        result = await self._retry_forever("workspace", A.SAVE_WORKSPACE, self._workspace_input())
        ws.saved = True
        ws.last_saved_at = workflow.now()
        ws.last_sync = result.progress

    async def _retry_forever(self, what: str, activity: str, arg: Any) -> SyncResult:
        delay = 1.0
        while True:
            try:
                return await self._host_activity(
                    activity,
                    arg,
                    result_type=SyncResult,
                    start_to_close=timedelta(hours=12),
                    attempts=3,
                    failure_code=codes.STORAGE_UNAVAILABLE,
                )
            except _ActivityFailed as failed:
                self._set_info(
                    Info(
                        code=codes.SYNC_RETRYING,
                        message=f"saving {what} failed, retrying in {delay:.0f}s: "
                        f"{failed.info.message}",
                    )
                )
            await workflow.sleep(timedelta(seconds=delay))
            delay = min(delay * 2, self._inp.tuning.push_retry_max_interval_s)

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
    ) -> Any:
        """Run an activity on the notebook's host; map failures to _HostLost or _ActivityFailed."""
        try:
            return await workflow.execute_activity(
                name,
                arg,
                result_type=result_type,
                task_queue=self._task_queue,
                schedule_to_start_timeout=self._pickup_timeout(),
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
            raise _ActivityFailed(state, info) from err

    def _host_lost(self, message: str) -> None:
        # Billing ends at the last heartbeat that saw the container running (or the last
        # checkpoint), not when the loss was noticed.
        b = self._billing
        if b.started_at is not None:
            seen = b.last_seen_running_at or b.started_at
            self._bill_until(min(seen, workflow.now()), final=True)
        # Nothing can be pushed from a lost host: the last checkpoint is what remains (I2).
        self._task_queue = None
        if self._container_launched:
            self._status.last_stopped_at = workflow.now()
        self._status.container = None
        self._status.url = None
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
        )
        return self._inp.model_copy(update={"carry": carry})

    def _check(self, command: Command) -> Outcome:
        result = outcome(self._status.state, command)
        if result == Outcome.CONFLICT:
            raise ApplicationError(
                conflict_message(self._status.state, command), type="CONFLICT", non_retryable=True
            )
        if result == Outcome.GONE:
            raise ApplicationError("the notebook was deleted", type="GONE", non_retryable=True)
        return result

    def _cancel_phase(self) -> None:
        if self._phase is not None and not self._phase.done():
            self._phase.cancel()

    # ---------------------------------------------------------- commands, reads

    @workflow.query
    def get(self) -> Notebook:
        return self._snapshot()

    @workflow.update
    def start(self, req: StartRequest) -> Notebook:
        self._transition(S.STARTING, Info(message="start requested"))
        return self._snapshot()

    @start.validator
    def _validate_start(self, req: StartRequest) -> None:
        self._check(Command.START)

    @workflow.update
    def stop(self, req: StopRequest) -> Notebook:
        if self._check(Command.STOP) == Outcome.PROCEED:
            self._outcome = (S.STOPPED, Info(code=codes.STOPPED_BY_USER, message="stopped by user"))
            self._transition(S.STOPPING, Info(message="stop requested: saving data"))
            self._cancel_phase()
        return self._snapshot()

    @stop.validator
    def _validate_stop(self, req: StopRequest) -> None:
        self._check(Command.STOP)

    @workflow.update
    def patch(self, req: PatchRequest) -> Notebook:
        """Change the timeout or auto-restart; the running run keeps what it started with."""
        changes = req.model_dump(exclude_none=True)
        spec = self._inp.spec.model_copy(update=changes)
        self._inp = self._inp.model_copy(update={"spec": spec})
        self._updated_at = workflow.now()
        return self._snapshot()

    @patch.validator
    def _validate_patch(self, req: PatchRequest) -> None:
        if self._status.state in (S.DELETING, S.DELETED):
            raise ApplicationError(
                f"cannot change a notebook that is {self._status.state.value}",
                type="CONFLICT",
                non_retryable=True,
            )

    @workflow.update
    def delete(self, req: DeleteRequest) -> Notebook:
        if self._check(Command.DELETE) == Outcome.PROCEED:
            self._keep_workspace = req.keep_workspace
            if self._status.state == S.STOPPING:
                self._delete_after_stop = True  # DELETING once stopped
                self._set_info(Info(message="delete requested: deleting once stopped"))
            else:
                self._transition(S.DELETING, Info(message="delete requested"))
                self._cancel_phase()
        return self._snapshot()

    @delete.validator
    def _validate_delete(self, req: DeleteRequest) -> None:
        self._check(Command.DELETE)
