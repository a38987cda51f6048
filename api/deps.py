"""Dependencies: one Temporal client and one settings object, made in the lifespan."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Path, Request

from api.errors import ApiError
from api.logs import LogService
from api.service import NotebookService
from domain.config import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_service(request: Request) -> NotebookService:
    return request.app.state.service


def get_logs(request: Request) -> LogService:
    return request.app.state.logs


def require_project_token(request: Request) -> None:
    """With `require_api_token`, a project's routes want one of its API tokens as a bearer
    token (the same tokens open its notebooks through the gateway)."""
    settings: Settings = request.app.state.settings
    if not settings.require_api_token:
        return
    project = request.path_params.get("project", "")
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    tokens = settings.api_tokens.get(project, [])
    if scheme.lower() != "bearer" or not value:
        raise ApiError(401, f"an API token of project {project} is needed (Authorization: Bearer)")
    if not any(hmac.compare_digest(value.strip(), t.get_secret_value()) for t in tokens):
        raise ApiError(403, f"this token does not open project {project}")


Service = Annotated[NotebookService, Depends(get_service)]
Logs = Annotated[LogService, Depends(get_logs)]
# Projects are DNS-style names, as they appear in bucket keys and search attributes.
Project = Annotated[str, Path(pattern=r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")]
