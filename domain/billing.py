"""Per-minute billing of RUNNING time: each commenced minute of a RUNNING period is billed
in full, once (invariant I4)."""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel

_MINUTE_US = 60_000_000


def billed_minutes(duration: timedelta) -> int:
    """ceil(seconds / 60), in integer microseconds so that 60 s is exactly 1 minute."""
    us = duration // timedelta(microseconds=1)
    return 0 if us <= 0 else -(-us // _MINUTE_US)


class UsageRecord(BaseModel):
    """One line of the ledger: minutes added to a RUNNING period. ``key`` makes a retried
    write a no-op; the minutes of a period's records add up to billed_minutes(period)."""

    key: str
    project: str
    notebook_id: str
    period: int  # the notebook's n-th RUNNING period, from 1
    seq: int  # the record's place in its period, from 1
    flavor: str
    kind: str  # "cpu" or "gpu"
    quantity: int
    minutes: int
    period_started_at: datetime
    recorded_at: datetime  # the moment up to which the period is billed
    final: bool  # the period has ended


class PeriodUsage(BaseModel):
    period: int
    flavor: str
    kind: str
    quantity: int
    started_at: datetime
    ended_at: datetime | None  # None: still RUNNING
    seconds: float
    minutes: int
