"""Billing as a property of the meter the workflow runs (domain.metering): over generated
sequences of start, checkpoint, stop, timeout, crash and host loss at arbitrary offsets,
with ledger writes retried at random, the ledger equals the sum over RUNNING periods of
ceil(seconds / 60), with no record lost or counted twice (I4)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from domain.billing import UsageRecord
from domain.messages import BillingState
from domain.metering import advance, open_period
from domain.spec import Resources

RES = Resources(flavor="ai1-1-gpu", gpu=2)
T0 = datetime(2026, 1, 1, tzinfo=UTC)
TIMEOUT = timedelta(hours=2)

EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["start", "checkpoint", "stop", "timeout", "crash", "host_loss"]),
        st.floats(min_value=0, max_value=4 * 3600, allow_nan=False),  # seconds after the last event
        st.floats(min_value=0, max_value=30, allow_nan=False),  # heartbeat lag at a host loss
        st.integers(min_value=1, max_value=3),  # how often each new record is written
    ),
    max_size=40,
)


@settings(max_examples=400, deadline=None)
@given(events=EVENTS)
def test_ledger_equals_the_sum_of_running_periods(events) -> None:
    b = BillingState()
    ledger: dict[str, UsageRecord] = {}
    expected_seconds: list[float] = []
    now = T0
    start: datetime | None = None

    def flush(times: int) -> None:
        # The workflow writes its pending records in order; a crash can repeat a write.
        for record in b.pending:
            for _ in range(times):
                ledger.setdefault(record.key, record)
        b.pending.clear()

    def close(end: datetime, times: int) -> None:
        nonlocal start
        assert start is not None
        end = max(end, b.billed_until)  # never billed backwards past a checkpoint
        advance(b, end, final=True, project="p", notebook_id="nb", resources=RES)
        expected_seconds.append((end - start).total_seconds())
        start = None
        flush(times)

    for kind, gap, lag, times in events:
        now += timedelta(seconds=gap)
        if start is not None and now >= start + TIMEOUT:
            close(start + TIMEOUT, times)  # the timeout fires at its deadline
            continue
        if kind == "start":
            if start is None:
                open_period(b, now)
                start = now
        elif start is None:
            continue
        elif kind == "checkpoint":
            advance(b, now, final=False, project="p", notebook_id="nb", resources=RES)
            flush(times)
        elif kind in ("stop", "crash"):
            close(now, times)
        elif kind == "timeout":
            close(min(now, start + TIMEOUT), times)
        elif kind == "host_loss":
            # billed to the last heartbeat that saw the container, which predates the notice
            close(max(start, now - timedelta(seconds=lag)), times)
    if start is not None:
        close(now, 1)

    records = list(ledger.values())
    assert sum(r.minutes for r in records) == sum(math.ceil(s / 60) for s in expected_seconds)
    assert b.total_minutes == sum(r.minutes for r in records)
    periods = sorted({r.period for r in records})
    assert periods == list(range(1, len(expected_seconds) + 1))  # none lost
    for period, seconds in zip(periods, expected_seconds, strict=True):
        mine = sorted((r for r in records if r.period == period), key=lambda r: r.seq)
        assert [r.seq for r in mine] == list(range(1, len(mine) + 1))  # none twice, none missing
        assert [r.final for r in mine] == [False] * (len(mine) - 1) + [True]
        assert sum(r.minutes for r in mine) == math.ceil(seconds / 60)
        assert all(r.minutes >= 0 and r.quantity == 2 and r.kind == "gpu" for r in mine)


def test_exact_minute_edges() -> None:
    b = BillingState()
    for seconds, minutes in [
        (0, 0),
        (0.000001, 1),
        (59.9, 1),
        (60, 1),
        (60.000001, 2),
        (61, 2),
        (3600, 60),
    ]:
        open_period(b, T0)
        advance(
            b,
            T0 + timedelta(seconds=seconds),
            final=True,
            project="p",
            notebook_id="nb",
            resources=RES,
        )
        assert b.periods[-1].minutes == minutes, seconds
