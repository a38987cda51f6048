"""REST routes for notebooks under /v1/projects/{project}/notebooks."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, status
from fastapi.responses import StreamingResponse

from api.auth import allow
from api.deps import Logs, Project, Service
from api.errors import NOTEBOOK_RESPONSES, ApiError
from api.events import sse
from domain.access import Action, Principal
from domain.messages import DataSyncRequest, LabelsRequest, PatchRequest
from domain.spec import LABEL_SELECTOR_PATTERN, NotebookSpec, check_labels
from domain.states import NotebookState
from domain.status import Notebook

router = APIRouter(
    prefix="/v1/projects/{project}/notebooks", tags=["notebooks"], responses=NOTEBOOK_RESPONSES
)


# Who may take each action in the path's project (401/403 otherwise; see api.auth.allow).
CreateCaller = Annotated[Principal, Depends(allow(Action.CREATE))]
ListCaller = Annotated[Principal, Depends(allow(Action.LIST))]
GetCaller = Annotated[Principal, Depends(allow(Action.GET))]
StartCaller = Annotated[Principal, Depends(allow(Action.START))]
StopCaller = Annotated[Principal, Depends(allow(Action.STOP))]
DatasyncCaller = Annotated[Principal, Depends(allow(Action.DATASYNC))]
LabelCaller = Annotated[Principal, Depends(allow(Action.LABEL))]
PatchCaller = Annotated[Principal, Depends(allow(Action.PATCH))]
LogsCaller = Annotated[Principal, Depends(allow(Action.LOGS))]
DeleteCaller = Annotated[Principal, Depends(allow(Action.DELETE))]
RotateTokenCaller = Annotated[Principal, Depends(allow(Action.ROTATE_TOKEN))]


def _labels(selectors: list[str]) -> dict[str, str]:
    labels = {}
    for selector in selectors:
        key, sep, value = selector.partition("=")
        if not sep or not key:
            raise ApiError(422, f"label: {selector!r} must look like key=value", field="label")
        labels[key] = value
    try:
        # Only label keys and values can match a label (and only they reach the query).
        return check_labels(labels)
    except ValueError as err:
        raise ApiError(422, f"label: {err}", field="label") from err


@router.post("", status_code=status.HTTP_201_CREATED, response_model=Notebook)
async def create_notebook(
    project: Project,
    spec: NotebookSpec,
    service: Service,
    request: Request,
    caller: CreateCaller,
) -> Notebook:
    notebook = await service.create(project, spec, caller)
    request.state.audit_notebook = notebook.id
    return notebook


@router.get("", response_model=list[Notebook])
async def list_notebooks(
    project: Project,
    service: Service,
    caller: ListCaller,
    state: NotebookState | None = None,
    label: Annotated[
        list[str],
        Query(
            description="key=value; repeat to require several",
            json_schema_extra={"items": {"type": "string", "pattern": LABEL_SELECTOR_PATTERN}},
        ),
    ] = [],  # noqa: B006
) -> list[Notebook]:
    return await service.list(project, state, _labels(label), caller)


@router.get("/{notebook_id}", response_model=Notebook)
async def get_notebook(
    project: Project,
    notebook_id: str,
    service: Service,
    caller: GetCaller,
    wait_for_change: Annotated[
        int | None,
        Query(
            ge=0,
            description="a status.version: answer once the notebook's version is past it "
            "(a long poll), or as it is after `timeout_s`",
        ),
    ] = None,
    timeout_s: Annotated[
        float, Query(ge=0, le=60, description="how long `wait_for_change` may wait")
    ] = 25,
) -> Notebook:
    """The notebook as its workflow last recorded it. Served from a cache that follows
    the workflow's history: a command answered by this API process shows in the next
    GET; changes from elsewhere show within the server's notice of them (milliseconds).
    A running sync's numbers are at most 1 s old; a queued notebook's place in line is
    asked of the fleet at each read."""
    if wait_for_change is None:
        return await service.get(project, notebook_id, caller)
    return await service.wait_for_change(project, notebook_id, wait_for_change, timeout_s, caller)


@router.get(
    "/{notebook_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "server-sent events, `id:` a status.version: `event: transition` "
            "(`data:` one of status.transitions) for every change of state, once, and "
            "`event: notebook` (`data:` the notebook as GET shows it) for every change, in "
            "order; the last one is DELETED when the notebook is deleted",
        }
    },
)
async def notebook_events(
    project: Project,
    notebook_id: str,
    service: Service,
    caller: GetCaller,
    request: Request,
    after_version: Annotated[
        int | None,
        Query(ge=0, description="resume after this status.version (or send Last-Event-ID)"),
    ] = None,
    timeout_s: Annotated[
        float,
        Query(ge=0, le=3600, description="end the stream after this long; reconnect to go on"),
    ] = 300,
) -> StreamingResponse:
    """Each change of the notebook (state, info, sync progress), once and in order. The
    stream begins with the notebook as it is, unless resumed from a version whose view
    it still is; resumed, it first sends the state changes made since that version."""
    if after_version is None:
        last = request.headers.get("last-event-id", "")
        after_version = int(last) if last.isdigit() else None
    changes = await service.changes(project, notebook_id, after_version, timeout_s, caller)
    return StreamingResponse(
        sse(changes, after_version),
        media_type="text/event-stream",
        # No proxy may buffer or cache a stream of changes.
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


@router.post("/{notebook_id}/start", status_code=status.HTTP_202_ACCEPTED, response_model=Notebook)
async def start_notebook(
    project: Project, notebook_id: str, service: Service, caller: StartCaller
) -> Notebook:
    return await service.start(project, notebook_id, caller)


@router.post("/{notebook_id}/stop", status_code=status.HTTP_202_ACCEPTED, response_model=Notebook)
async def stop_notebook(
    project: Project, notebook_id: str, service: Service, caller: StopCaller
) -> Notebook:
    return await service.stop(project, notebook_id, caller)


@router.post(
    "/{notebook_id}/datasync", status_code=status.HTTP_202_ACCEPTED, response_model=Notebook
)
async def datasync_notebook(
    project: Project,
    notebook_id: str,
    req: DataSyncRequest,
    service: Service,
    caller: DatasyncCaller,
) -> Notebook:
    """Push or pull now, while RUNNING (`volume`: a mount path or `workspace`; omitted:
    every volume the direction applies to, and the workspace for a push). Progress shows
    in `status.datasyncs`."""
    return await service.datasync(project, notebook_id, req, caller)


@router.put("/{notebook_id}/labels", response_model=Notebook)
async def set_labels(
    project: Project,
    notebook_id: str,
    req: LabelsRequest,
    service: Service,
    caller: LabelCaller,
) -> Notebook:
    """Replace the notebook's labels (`{"labels": {}}` removes them all)."""
    return await service.set_labels(project, notebook_id, req, caller)


@router.patch("/{notebook_id}", response_model=Notebook)
async def patch_notebook(
    project: Project,
    notebook_id: str,
    changes: PatchRequest,
    service: Service,
    caller: PatchCaller,
) -> Notebook:
    """Change `timeout` or `timeout_auto_restart`; they take effect from the next start."""
    return await service.patch(project, notebook_id, changes, caller)


@router.get(
    "/{notebook_id}/logs",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/plain": {}}, "description": "the container's output"}},
)
async def notebook_logs(
    project: Project,
    notebook_id: str,
    logs: Logs,
    service: Service,
    caller: LogsCaller,
    follow: bool = False,
    tail: Annotated[int | None, Query(ge=0, description="lines from the end; all if unset")] = None,
) -> StreamingResponse:
    """The container's output (stdout and stderr); with `follow`, it goes on until the
    container exits or the client leaves."""
    if caller.selector:
        await service.get(project, notebook_id, caller)  # 404 outside the token's reach
    stream = await logs.open(project, notebook_id, tail, follow)
    return StreamingResponse(stream, media_type="text/plain; charset=utf-8")


@router.delete("/{notebook_id}", status_code=status.HTTP_202_ACCEPTED, response_model=Notebook)
async def delete_notebook(
    project: Project,
    notebook_id: str,
    service: Service,
    caller: DeleteCaller,
    keep_workspace: bool = False,
    force: Annotated[
        bool,
        Query(
            description="drop what could not be saved (a notebook FAILED with SYNC_FAILED: "
            "status.left_on_host); the answer's status.info says what is dropped"
        ),
    ] = False,
) -> Notebook:
    """Delete the notebook: it goes through the stop sequence first (data saved), then its
    container, local data and (unless `keep_workspace`) saved workspace are removed. Data
    that cannot be saved stops the delete (FAILED, SYNC_FAILED) unless `force`."""
    return await service.delete(project, notebook_id, keep_workspace, caller, force=force)


@router.post("/{notebook_id}/token/rotate", response_model=Notebook)
async def rotate_notebook_token(
    project: Project,
    notebook_id: str,
    service: Service,
    request: Request,
    caller: RotateTokenCaller,
) -> Notebook:
    """A new link token (status.url): the old link, and every editor session opened with
    it, stop working at once on this API process and within 2 s on others; the editor
    keeps running."""
    notebook = await service.rotate_token(project, notebook_id, caller)
    request.app.state.gateway.invalidate(notebook_id)
    return notebook
