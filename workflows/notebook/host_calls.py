"""Calls to the notebook's host: activity options, how their failures read (a lost host,
a user's failure, the platform's), the container watch, and all-or-nothing groups."""

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
    from domain.messages import WatchInput, WatchResult
    from domain.states import NotebookState
    from domain.status import Info

from workflows.notebook.context import RunContext

S = NotebookState
WAIT = workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED


class HostLost(Exception):
    pass


class ActivityFailed(Exception):
    def __init__(self, state: NotebookState, info: Info, details: dict | None = None) -> None:
        super().__init__(info.message)
        self.state = state
        self.info = info
        self.details = details or {}


def causes(err: BaseException) -> Iterator[BaseException]:
    """The error and what caused it, down the chain (Temporal's ``cause`` included)."""
    cause: BaseException | None = err
    while cause is not None:
        yield cause
        cause = cause.__cause__ or getattr(cause, "cause", None)


def failure_details(err: BaseException) -> dict:
    """The first dict an ApplicationError carries (a push says what it left behind)."""
    for cause in causes(err):
        if isinstance(cause, ApplicationError):
            return next((d for d in cause.details if isinstance(d, dict)), {})
    return {}


def failure_info(err: BaseException, default_code: str) -> Info:
    """Turn an activity failure into a code and a message a person can act on."""
    for cause in causes(err):
        if isinstance(cause, ApplicationError) and cause.type:
            return Info(code=cause.type, message=cause.message)
    return Info(code=default_code, message=str(err.__cause__ or err))


def is_host_lost(err: BaseException) -> bool:
    """A host activity nobody picked up in time, or whose heartbeats stopped for good."""
    cause = err.cause if isinstance(err, ActivityError) else None
    return isinstance(cause, TimeoutError) and cause.type == TimeoutType.SCHEDULE_TO_START


async def cancel_and_wait(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def all_or_nothing(jobs: list[Any]) -> None:
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
        await cancel_and_wait(tasks)
        raise
    await cancel_and_wait(tasks)
    errors = [t.exception() for t in tasks if not t.cancelled() and t.exception()]
    for err in errors:
        if isinstance(err, HostLost):
            raise err
    if errors:
        # A user's data problem outranks a platform one: it is what they must fix.
        failures = sorted(
            (e for e in errors if isinstance(e, ActivityFailed)),
            key=lambda f: f.state != S.FAILED,
        )
        raise failures[0] if failures else errors[0]  # type: ignore[misc]


async def host_activity(
    nb: RunContext,
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
    run left data); map failures to HostLost or ActivityFailed."""
    pickup = nb.pickup_timeout()
    if task_queue is not None:
        # A host that held an earlier run may be gone for good: do not wait long.
        pickup = min(pickup, timedelta(seconds=30))
    try:
        return await workflow.execute_activity(
            name,
            arg,
            result_type=result_type,
            activity_id=activity_id,
            task_queue=task_queue or nb.m.task_queue,
            schedule_to_start_timeout=pickup,
            start_to_close_timeout=start_to_close,
            # Every host activity heartbeats: a killed agent is noticed in seconds.
            heartbeat_timeout=nb.heartbeat_timeout(),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=1),
                maximum_interval=timedelta(seconds=10),
                maximum_attempts=attempts,
                non_retryable_error_types=list(codes.USER_FAILURES | {codes.IMAGE_NOT_FOUND}),
            ),
            cancellation_type=WAIT,
        )
    except ActivityError as err:
        if is_host_lost(err):
            raise HostLost() from err
        if isinstance(err.cause, CancelledError):
            raise asyncio.CancelledError() from err
        info = failure_info(err, failure_code)
        state = S.FAILED if codes.is_user_failure(info.code) else S.ERROR
        raise ActivityFailed(state, info, failure_details(err)) from err


async def watch(nb: RunContext, interval: timedelta) -> WatchResult | None:
    """One watch of the container; None when the host is lost."""
    failures = 0
    while True:
        try:
            return await workflow.execute_activity(
                A.WATCH_CONTAINER,
                WatchInput(ref=nb.ref, max_s=interval.total_seconds()),
                result_type=WatchResult,
                task_queue=nb.m.task_queue,
                schedule_to_start_timeout=nb.pickup_timeout(),
                start_to_close_timeout=interval + timedelta(minutes=10),
                heartbeat_timeout=nb.heartbeat_timeout(),
                # The workflow retries itself, to keep the last heartbeat of each attempt.
                retry_policy=RetryPolicy(maximum_attempts=1),
            )
        except ActivityError as err:
            cause = err.cause
            if isinstance(cause, CancelledError):
                raise asyncio.CancelledError() from err
            if isinstance(cause, TimeoutError):
                note_heartbeat(nb, cause.last_heartbeat_details)
                if cause.type == TimeoutType.SCHEDULE_TO_START:
                    return None  # nobody took the watch again: the host is gone
                continue  # the agent died or restarted: watch again (re-adopt)
            failures += 1
            if failures >= 5:
                raise ActivityFailed(S.ERROR, failure_info(err, codes.INTERNAL_ERROR)) from err
            await workflow.sleep(timedelta(seconds=2))


def note_heartbeat(nb: RunContext, details: Any) -> None:
    """The watch's heartbeats say when the container was last seen running: billing of
    a lost host ends there."""
    for detail in details or ():
        seen = detail.get("last_seen_running_at") if isinstance(detail, dict) else None
        if seen:
            at = datetime.fromisoformat(seen)
            b = nb.billing
            if b.last_seen_running_at is None or at > b.last_seen_running_at:
                b.last_seen_running_at = at


async def remove_local_data(nb: RunContext, task_queue: str | None = None) -> None:
    """The notebook's directory on its host (or on ``task_queue``'s) is removed."""
    await host_activity(
        nb,
        A.REMOVE_LOCAL_DATA,
        nb.ref,
        result_type=None,
        start_to_close=timedelta(minutes=10),
        attempts=0,
        failure_code=codes.INTERNAL_ERROR,
        task_queue=task_queue,
    )
