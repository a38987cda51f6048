"""REST routes for notebooks under /v1/projects/{project}/notebooks."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, status
from fastapi.responses import StreamingResponse

from api.deps import Logs, Project, Service, require_project_token
from api.errors import ApiError
from domain.messages import DataSyncRequest, LabelsRequest, PatchRequest
from domain.spec import NotebookSpec
from domain.states import NotebookState
from domain.status import Notebook

router = APIRouter(
    prefix="/v1/projects/{project}/notebooks",
    tags=["notebooks"],
    dependencies=[Depends(require_project_token)],
)


def _labels(selectors: list[str]) -> dict[str, str]:
    labels = {}
    for selector in selectors:
        key, sep, value = selector.partition("=")
        if not sep or not key:
            raise ApiError(422, f"label: {selector!r} must look like key=value", field="label")
        labels[key] = value
    return labels


@router.post("", status_code=status.HTTP_201_CREATED, response_model=Notebook)
async def create_notebook(project: Project, spec: NotebookSpec, service: Service) -> Notebook:
    return await service.create(project, spec)


@router.get("", response_model=list[Notebook])
async def list_notebooks(
    project: Project,
    service: Service,
    state: NotebookState | None = None,
    label: Annotated[list[str], Query(description="key=value; repeat to require several")] = [],  # noqa: B006
) -> list[Notebook]:
    return await service.list(project, state, _labels(label))


@router.get("/{notebook_id}", response_model=Notebook)
async def get_notebook(project: Project, notebook_id: str, service: Service) -> Notebook:
    return await service.get(project, notebook_id)


@router.post("/{notebook_id}/start", status_code=status.HTTP_202_ACCEPTED, response_model=Notebook)
async def start_notebook(project: Project, notebook_id: str, service: Service) -> Notebook:
    return await service.start(project, notebook_id)


@router.post("/{notebook_id}/stop", status_code=status.HTTP_202_ACCEPTED, response_model=Notebook)
async def stop_notebook(project: Project, notebook_id: str, service: Service) -> Notebook:
    return await service.stop(project, notebook_id)


@router.post(
    "/{notebook_id}/datasync", status_code=status.HTTP_202_ACCEPTED, response_model=Notebook
)
async def datasync_notebook(
    project: Project, notebook_id: str, req: DataSyncRequest, service: Service
) -> Notebook:
    """Push or pull now, while RUNNING (`volume`: a mount path or `workspace`; omitted:
    every volume the direction applies to, and the workspace for a push). Progress shows
    in `status.datasyncs`."""
    return await service.datasync(project, notebook_id, req)


@router.put("/{notebook_id}/labels", response_model=Notebook)
async def set_labels(
    project: Project, notebook_id: str, req: LabelsRequest, service: Service
) -> Notebook:
    """Replace the notebook's labels (`{"labels": {}}` removes them all)."""
    return await service.set_labels(project, notebook_id, req)


@router.patch("/{notebook_id}", response_model=Notebook)
async def patch_notebook(
    project: Project, notebook_id: str, changes: PatchRequest, service: Service
) -> Notebook:
    """Change `timeout` or `timeout_auto_restart`; they take effect from the next start."""
    return await service.patch(project, notebook_id, changes)


@router.get(
    "/{notebook_id}/logs",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/plain": {}}, "description": "the container's output"}},
)
async def notebook_logs(
    project: Project,
    notebook_id: str,
    logs: Logs,
    follow: bool = False,
    tail: Annotated[int | None, Query(ge=0, description="lines from the end; all if unset")] = None,
) -> StreamingResponse:
    """The container's output (stdout and stderr); with `follow`, it goes on until the
    container exits or the client leaves."""
    stream = await logs.open(project, notebook_id, tail, follow)
    return StreamingResponse(stream, media_type="text/plain; charset=utf-8")


@router.delete("/{notebook_id}", status_code=status.HTTP_202_ACCEPTED, response_model=Notebook)
async def delete_notebook(
    project: Project, notebook_id: str, service: Service, keep_workspace: bool = False
) -> Notebook:
    return await service.delete(project, notebook_id, keep_workspace)
