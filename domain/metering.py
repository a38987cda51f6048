"""The meter of a RUNNING period: turns "billed up to t" into ledger records whose minutes
add up, per period, to ceil(seconds / 60), each record once (invariant I4). Pure, so the
workflow stays deterministic and a property test can drive it directly."""

from __future__ import annotations

from datetime import datetime

from domain.billing import PeriodUsage, UsageRecord, billed_minutes
from domain.messages import BillingState
from domain.spec import Resources

KEPT_PERIODS = 20  # in the workflow; the ledger keeps them all


def open_period(b: BillingState, now: datetime) -> None:
    b.period += 1
    b.started_at = b.billed_until = now
    b.seq = b.billed = 0
    b.last_seen_running_at = None


def advance(
    b: BillingState,
    until: datetime,
    *,
    final: bool,
    project: str,
    notebook_id: str,
    resources: Resources,
) -> None:
    """Bill the open period up to ``until`` (never backwards); ``final`` closes it."""
    if b.started_at is None:
        return
    assert b.billed_until is not None
    until = max(until, b.billed_until)
    minutes = billed_minutes(until - b.started_at)
    delta = minutes - b.billed
    if delta > 0 or final:
        b.seq += 1
        b.pending.append(
            UsageRecord(
                key=f"{notebook_id}/{b.period}/{b.seq}",
                project=project,
                notebook_id=notebook_id,
                period=b.period,
                seq=b.seq,
                flavor=resources.flavor,
                kind=resources.kind,
                quantity=resources.units,
                minutes=delta,
                period_started_at=b.started_at,
                recorded_at=until,
                final=final,
            )
        )
    b.billed, b.billed_until = minutes, until
    b.total_minutes += delta
    if final:
        b.periods.append(
            PeriodUsage(
                period=b.period,
                flavor=resources.flavor,
                kind=resources.kind,
                quantity=resources.units,
                started_at=b.started_at,
                ended_at=until,
                seconds=(until - b.started_at).total_seconds(),
                minutes=minutes,
            )
        )
        del b.periods[:-KEPT_PERIODS]
        b.started_at = None
