"""tests.support.eventually: what counts as "not yet", and what a timeout says."""

from __future__ import annotations

import pytest

from tests.support import eventually, eventually_async


def _counter(ready_at: int, value: object = "ready"):
    """A check that is not ready for its first ``ready_at - 1`` calls."""
    calls = []

    def check() -> object:
        calls.append(1)
        return value if len(calls) >= ready_at else None

    return check, calls


def test_returns_the_first_truthy_value() -> None:
    check, calls = _counter(3)
    assert eventually(check, timeout=5, interval=0) == "ready"
    assert len(calls) == 3


def test_retries_an_assertion_and_returns_once_it_holds() -> None:
    calls = []

    def check() -> int:
        calls.append(1)
        assert len(calls) >= 2, "not yet"
        return len(calls)

    assert eventually(check, timeout=5, interval=0) == 2


def test_a_timeout_names_what_and_the_last_value() -> None:
    check, calls = _counter(10**9, value=None)
    with pytest.raises(AssertionError, match=r"waiting for the answer; last returned None"):
        eventually(check, timeout=0.05, interval=0.01, what="the answer")
    assert len(calls) >= 2


def test_a_timeout_chains_the_last_assertion_and_adds_the_detail() -> None:
    def check() -> None:
        raise AssertionError("state is STARTING")

    with pytest.raises(AssertionError) as info:
        eventually(check, timeout=0, what="RUNNING", detail=lambda: "seen: STARTING")
    assert str(info.value).splitlines() == [
        "timed out after 0s waiting for RUNNING; last AssertionError: state is STARTING",
        "seen: STARTING",
    ]
    assert isinstance(info.value.__cause__, AssertionError)


def test_other_exceptions_propagate_at_once_unless_retried() -> None:
    calls = []

    def check() -> bool:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("down")
        return True

    with pytest.raises(ConnectionError):
        eventually(check, timeout=5, interval=0)
    assert len(calls) == 1
    assert eventually(check, timeout=5, interval=0, retry_on=(ConnectionError,)) is True

    def failing() -> None:
        raise AssertionError("must fail at once")

    with pytest.raises(AssertionError, match="must fail at once"):
        eventually(failing, timeout=5, retry_on=())


async def test_the_async_flavour_waits_the_same_way() -> None:
    check, calls = _counter(3)

    async def acheck() -> object:
        return check()

    assert await eventually_async(acheck, timeout=5, interval=0) == "ready"
    assert len(calls) == 3

    async def never() -> None:
        raise AssertionError("nope")

    with pytest.raises(AssertionError, match="waiting for it; last AssertionError: nope"):
        await eventually_async(never, timeout=0.02, interval=0.01, what="it")
