"""Dependencies: one Temporal client and one settings object, made in the lifespan."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from api.logs import LogService
from api.service import NotebookService
from domain.config import Settings


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_service(request: Request) -> NotebookService:
    return request.app.state.service


async def get_logs(request: Request) -> LogService:
    return request.app.state.logs


Service = Annotated[NotebookService, Depends(get_service)]
Logs = Annotated[LogService, Depends(get_logs)]
# Projects are DNS-style names, as they appear in bucket keys and search attributes.
Project = Annotated[str, Path(pattern=r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")]
