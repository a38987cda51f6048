"""Billed minutes: per notebook, and per project over a period."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from api.deps import Project, require_project_token
from api.usage import NotebookUsage, ProjectUsage, UsageService

router = APIRouter(
    prefix="/v1/projects/{project}",
    tags=["usage"],
    dependencies=[Depends(require_project_token)],
)


def get_usage(request: Request) -> UsageService:
    return request.app.state.usage


Usage = Annotated[UsageService, Depends(get_usage)]


@router.get("/notebooks/{notebook_id}/usage", response_model=NotebookUsage)
async def notebook_usage(project: Project, notebook_id: str, usage: Usage) -> NotebookUsage:
    return await usage.notebook(project, notebook_id)


@router.get("/usage", response_model=ProjectUsage)
async def project_usage(
    project: Project,
    usage: Usage,
    start: Annotated[datetime | None, Query(alias="from")] = None,
    end: Annotated[datetime | None, Query(alias="to")] = None,
) -> ProjectUsage:
    """Minutes recorded in [from, to) per notebook and per flavor (default: the last 30 days)."""
    end = end or datetime.now(UTC)
    start = start or end - timedelta(days=30)
    return await usage.project(project, _utc(start), _utc(end))


def _utc(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)
