"""Waiting in tests: one polling helper, so that every "until X" in the suite treats
"not yet" the same way and a timeout says what was awaited and what was seen last."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

# Only a failed assertion means "not yet" by default: any other exception from a check is
# a real failure, and retrying it until the timeout would hide it and waste the wait.
NOT_YET: tuple[type[BaseException], ...] = (AssertionError,)


def eventually(
    check: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.1,
    what: str = "",
    retry_on: tuple[type[BaseException], ...] = NOT_YET,
    detail: Callable[[], object] | None = None,
) -> T:
    """The first truthy value ``check()`` returns, calling it every ``interval`` seconds.

    A falsy value, or an exception in ``retry_on``, means "not yet" (pass ``retry_on=()``
    when the check's own assertions must fail at once). After ``timeout`` seconds an
    AssertionError names ``what`` and the last value or exception (chained), and adds
    ``detail()``: evaluated only then, so it may be costly.
    """
    deadline = time.monotonic() + timeout
    while True:
        error: BaseException | None = None
        try:
            value = check()
        except retry_on as err:
            value, error = None, err
        else:
            if value:
                return value
        # Checked after the attempt, so that a slow check still gets a last look.
        if time.monotonic() >= deadline:
            raise _timed_out(timeout, what, value, error, detail) from error
        time.sleep(interval)


async def eventually_async(
    check: Callable[[], Awaitable[T | None]],
    *,
    # Not asyncio.timeout: cancelling a check mid-call would lose its last answer.
    timeout: float,  # noqa: ASYNC109
    interval: float = 0.1,
    what: str = "",
    retry_on: tuple[type[BaseException], ...] = NOT_YET,
    detail: Callable[[], object] | None = None,
) -> T:
    """:func:`eventually` for a coroutine check; the event loop runs while it waits."""
    deadline = time.monotonic() + timeout
    while True:
        error: BaseException | None = None
        try:
            value = await check()
        except retry_on as err:
            value, error = None, err
        else:
            if value:
                return value
        if time.monotonic() >= deadline:
            raise _timed_out(timeout, what, value, error, detail) from error
        await asyncio.sleep(interval)


def _timed_out(
    timeout: float,
    what: str,
    value: object,
    error: BaseException | None,
    detail: Callable[[], object] | None,
) -> AssertionError:
    last = f"{type(error).__name__}: {error}" if error is not None else f"returned {value!r}"
    message = f"timed out after {timeout:g}s waiting for {what or 'the check'}; last {last}"
    return AssertionError(message if detail is None else f"{message}\n{detail()}")
