"""Usage as people ask for it: per notebook (past periods from the ledger, the current one
live) and per project over a time range."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated

from pydantic import BaseModel, BeforeValidator

from api.errors import ApiError
from api.service import NotebookService
from domain.access import Principal, reaches
from domain.billing import PeriodUsage, billed_minutes
from domain.states import NotebookState
from ledger.usage import UsageLedger


def _not_a_number(value: object) -> object:
    # pydantic would take "0.5" for a Unix time; the document says date-time.
    if isinstance(value, str) and not re.match(r"\d{4}-\d{2}-\d{2}", value):
        raise ValueError("must be a date-time such as 2025-01-31T00:00:00Z")
    return value


# A time in a query (?from=, ?to=): ISO 8601; without an offset it is UTC.
Instant = Annotated[datetime, BeforeValidator(_not_a_number)]


def period(start: datetime | None, end: datetime | None, default: timedelta):
    """[from, to) of a query, both with an offset: no `to` is now, no `from` is `default`
    before `to`. A time the ledgers cannot hold in UTC is invalid input, not a 500."""
    end = _in_utc_range(end, "to") if end else datetime.now(UTC)
    if start:
        start = _in_utc_range(start, "from")
    else:
        try:
            start = end - default
        except OverflowError:
            raise ApiError(
                422, f"to: too early (from is {default.days} days before it)", field="to"
            ) from None
    if start >= end:
        raise ApiError(422, "from: must be before to", field="from")
    return start, end


def _in_utc_range(at: datetime, name: str) -> datetime:
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    try:
        at.astimezone(UTC)
    except OverflowError:
        raise ApiError(422, f"{name}: out of range once in UTC", field=name) from None
    return at


class NotebookUsage(BaseModel):
    notebook_id: str
    project: str
    current: PeriodUsage | None  # the RUNNING period so far; minutes as billed if it ended now
    periods: list[PeriodUsage]  # ended periods, from the ledger
    total_minutes: int  # ended periods plus what the ledger holds of the current one


class ProjectUsage(BaseModel):
    project: str
    start: datetime
    end: datetime
    total_minutes: int
    by_notebook: list[dict]
    by_flavor: list[dict]


class UsageService:
    def __init__(self, notebooks: NotebookService, ledger: UsageLedger) -> None:
        self._notebooks = notebooks
        self._ledger = ledger

    async def notebook(
        self, project: str, notebook_id: str, caller: Principal | None = None
    ) -> NotebookUsage:
        records = await asyncio.to_thread(self._ledger.records, project, notebook_id)
        try:
            notebook = await self._notebooks.get(project, notebook_id)
        except ApiError as err:
            # A deleted notebook's usage stays in the ledger, for tokens that see the
            # whole project (its labels, which a selector would match, are gone with it).
            if err.status != 404 or not records or (caller is not None and caller.selector):
                raise
            notebook = None
        if notebook is not None and caller is not None:
            if not reaches(caller.selector, notebook.spec.labels):
                raise ApiError(404, f"notebook {notebook_id} not found in project {project}")
        periods: dict[int, PeriodUsage] = {}
        recorded = 0
        for r in records:
            recorded += r.minutes
            p = periods.get(r.period)
            if p is None:
                p = periods[r.period] = PeriodUsage(
                    period=r.period,
                    flavor=r.flavor,
                    kind=r.kind,
                    quantity=r.quantity,
                    started_at=r.period_started_at,
                    ended_at=None,
                    seconds=0,
                    minutes=0,
                )
            p.minutes += r.minutes
            p.seconds = (r.recorded_at - r.period_started_at).total_seconds()
            if r.final:
                p.ended_at = r.recorded_at
        current = None
        if notebook is not None and notebook.status.state == NotebookState.RUNNING:
            started = notebook.status.last_started_at
            if started is not None:
                elapsed = datetime.now(UTC) - started
                res = notebook.spec.resources
                current = PeriodUsage(
                    period=max(periods, default=0) + (0 if _open(periods) else 1),
                    flavor=res.flavor,
                    kind=res.kind,
                    quantity=res.units,
                    started_at=started,
                    ended_at=None,
                    seconds=elapsed.total_seconds(),
                    minutes=billed_minutes(elapsed),
                )
        ended = [p for p in periods.values() if p.ended_at is not None]
        return NotebookUsage(
            notebook_id=notebook_id,
            project=project,
            current=current,
            periods=sorted(ended, key=lambda p: p.period),
            total_minutes=recorded,
        )

    async def project(
        self, project: str, start: datetime, end: datetime, only: set[str] | None = None
    ) -> ProjectUsage:
        if start >= end:
            raise ApiError(422, "from: must be before to", field="from")
        rows = await asyncio.to_thread(self._ledger.summary, project, start, end)
        if only is not None:
            rows = [r for r in rows if r["notebook_id"] in only]
        flavors: dict[tuple[str, str], dict] = {}
        for row in rows:
            f = flavors.setdefault(
                (row["flavor"], row["kind"]),
                {"flavor": row["flavor"], "kind": row["kind"], "minutes": 0, "unit_minutes": 0},
            )
            f["minutes"] += row["minutes"]
            f["unit_minutes"] += row["unit_minutes"]
        return ProjectUsage(
            project=project,
            start=start,
            end=end,
            total_minutes=sum(r["minutes"] for r in rows),
            by_notebook=rows,
            by_flavor=list(flavors.values()),
        )


def _open(periods: dict[int, PeriodUsage]) -> bool:
    """The latest period in the ledger is still open (checkpointed, not ended)."""
    return bool(periods) and periods[max(periods)].ended_at is None
