"""Billed minutes: per notebook, and per project over a period."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from api.auth import allow
from api.deps import Project, Service
from api.errors import NOTEBOOK_RESPONSES
from api.usage import Instant, NotebookUsage, ProjectUsage, UsageService, period
from domain.access import Action, Principal

router = APIRouter(prefix="/v1/projects/{project}", tags=["usage"], responses=NOTEBOOK_RESPONSES)
Reader = Annotated[Principal, Depends(allow(Action.USAGE))]


async def get_usage(request: Request) -> UsageService:
    return request.app.state.usage


Usage = Annotated[UsageService, Depends(get_usage)]


@router.get("/notebooks/{notebook_id}/usage", response_model=NotebookUsage)
async def notebook_usage(
    project: Project, notebook_id: str, usage: Usage, caller: Reader
) -> NotebookUsage:
    return await usage.notebook(project, notebook_id, caller)


@router.get("/usage", response_model=ProjectUsage)
async def project_usage(
    project: Project,
    usage: Usage,
    service: Service,
    caller: Reader,
    start: Annotated[Instant | None, Query(alias="from")] = None,
    end: Annotated[Instant | None, Query(alias="to")] = None,
) -> ProjectUsage:
    """Minutes recorded in [from, to) per notebook and per flavor (default: the last 30 days).
    A token limited by a label selector sees the notebooks it reaches now, and only them."""
    start, end = period(start, end, timedelta(days=30))
    only = None
    if caller.selector:
        only = {nb.id for nb in await service.list(project, caller=caller)}
    return await usage.project(project, start, end, only)
