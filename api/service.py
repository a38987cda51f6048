"""Notebook operations on the Temporal client: what the REST routes (and later the CLI) call.

Creates start a workflow; commands are Updates (a validator's rejection is a 409); reads
are Queries; lists come from search attributes.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

from temporalio.client import Client, WorkflowExecutionDescription, WorkflowUpdateFailedError
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from api import catalog
from api.errors import ApiError
from api.fleet import FleetService
from api.status_cache import StatusCache
from domain import codes, protocol
from domain import search_attributes as sa
from domain.access import Principal, Role, reaches, selector_problem
from domain.config import Settings
from domain.datasync import WORKSPACE
from domain.fleet import queued_message
from domain.gateway import notebook_url
from domain.ids import CONTROL_TASK_QUEUE, valid_notebook_id, workflow_id
from domain.messages import (
    DataSyncCommand,
    DataSyncRequest,
    DeleteRequest,
    Issued,
    LabelsCommand,
    LabelsRequest,
    NotebookInput,
    PatchCommand,
    PatchRequest,
    RotateTokenRequest,
    StartRequest,
    StopRequest,
)
from domain.spec import NotebookSpec
from domain.states import NotebookState
from domain.status import (
    SYNC_COUNTERS,
    Info,
    Notebook,
    NotebookStatus,
    SyncState,
    VolumeStatus,
    WorkspaceStatus,
    initial_notebook,
)
from domain.tokens import editor_token, link_token
from temporal_client import notebook_calls, revival
from temporal_client.revival import CLOSED_FROM_OUTSIDE

RPC_TIMEOUT = timedelta(seconds=15)
QUERY_TIMEOUT = timedelta(seconds=5)
STALE_STATUS = "STATUS_STALE"
# Updates wait for the workflow to accept them, which needs a worker: bounded, then 503.
UPDATE_TIMEOUT = timedelta(seconds=30)

# A notebook update of temporal_client.notebook_calls (stop, patch, ...).
Update = Callable[..., Awaitable[Notebook]]


class NotebookService:
    def __init__(self, client: Client, settings: Settings, fleet: FleetService) -> None:
        self._client = client
        self._settings = settings
        self._fleet = fleet
        self._origins = settings.notebook_origin_pattern
        self._cache = StatusCache(client, self._load, self._with_extras)
        self._lists = _ListCache()

    def _present(self, notebook: Notebook, caller: Principal | None = None) -> Notebook:
        """The gateway's address while the editor serves somewhere, with the notebook's
        link token (derived here, never stored in history) for a caller who may open the
        editor fully: a read token's holder gets the address alone, and opens it with
        its own token (read-only), never with the link's."""
        status = notebook.status
        url = None
        if status.endpoint:
            url = notebook_url(self._origins, notebook.spec.editor, notebook.id)
            full = caller is None or caller.role is not Role.READ
            if not notebook.spec.unsecure_http and full:
                url += f"?token={self.link_token(notebook)}"
        if url != status.url:
            notebook = notebook.model_copy(
                update={"status": status.model_copy(update={"url": url})}
            )
        return notebook

    def editor_token(self, notebook_id: str) -> str:
        """What the gateway signs in to the editor with (never shown to anyone)."""
        return editor_token(self._settings.token_secret.get_secret_value(), notebook_id)

    def link_token(self, notebook: Notebook) -> str:
        """What opens the notebook through the gateway: bound to its project, id and token
        generation, so a rotation ends every link and session of the generation before."""
        return link_token(
            self._settings.token_secret.get_secret_value(),
            notebook.project,
            notebook.id,
            notebook.status.token_generation,
        )

    async def aclose(self) -> None:
        await self._cache.aclose()

    async def locate(self, project: str, notebook_id: str) -> Notebook:
        """The notebook as its workflow knows it, nothing added: what the gateway routes by."""
        _check_id(project, notebook_id)
        notebook = await self._cache.read((project, notebook_id))
        if notebook.status.state == NotebookState.DELETED:
            raise ApiError(404, f"notebook {notebook_id} not found in project {project}")
        return notebook

    async def _load(self, project: str, notebook_id: str, watched: bool = False) -> Notebook:
        """What the status cache refreshes from: the workflow's answer, or, when no worker
        answers, what visibility recorded at the last transition."""
        handle = self._handle(project, notebook_id)
        try:
            if watched:
                # The watcher reads the history itself: a run closed from outside ends
                # its watch, and the reads after it describe the workflow again.
                return await notebook_calls.get(handle, rpc_timeout=QUERY_TIMEOUT)
            return await self._read(handle)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise self._rpc_error(err, project, notebook_id) from err
            return await self._from_visibility(handle, project, notebook_id)

    async def _with_extras(self, notebook: Notebook) -> Notebook:
        """What changes without the workflow knowing, on a copy: the numbers of a sync
        under way and a queued notebook's place in line."""
        notebook = notebook.model_copy(deep=True)
        handle = self._handle(notebook.project, notebook.id)
        await self._add_live_progress(handle, notebook)
        await self._add_queue_position(notebook)
        return notebook

    async def _read(self, handle) -> Notebook:
        """The workflow's answer to ``get``, unless the workflow is closed: a closed
        workflow still answers queries (by replaying its history, which may end RUNNING),
        so whether it lives is told by its description, asked at the same time."""
        desc: WorkflowExecutionDescription | BaseException
        notebook: Notebook | BaseException
        desc, notebook = await asyncio.gather(
            handle.describe(rpc_timeout=QUERY_TIMEOUT),
            notebook_calls.get(handle, rpc_timeout=QUERY_TIMEOUT),
            return_exceptions=True,
        )
        if isinstance(notebook, BaseException):
            raise notebook
        if isinstance(desc, WorkflowExecutionDescription) and desc.status in CLOSED_FROM_OUTSIDE:
            return _closed_view(notebook, desc)
        return notebook

    def _handle(self, project: str, notebook_id: str):
        _check_id(project, notebook_id)
        return self._client.get_workflow_handle(workflow_id(project, notebook_id))

    async def create(
        self, project: str, spec: NotebookSpec, caller: Principal | None = None
    ) -> Notebook:
        if caller is not None and (problem := selector_problem(caller.selector, spec.labels)):
            raise ApiError(403, f"labels: {problem}", field="labels")
        spec, image = catalog.validate(self._settings, spec, project)
        catalog.check_timeout(self._settings, spec.timeout)
        await self._fleet.check_project_quota(project, spec.resources.gpu or 0)
        inp = NotebookInput(
            project=project,
            notebook_id=uuid.uuid4().hex,
            spec=spec,
            image=image,
            workspace_bucket=self._settings.workspace_bucket,
            created_at=datetime.now(UTC),
            tuning=self._settings.tuning(),
            created_by=caller.actor if caller is not None else None,
        )
        notebook = initial_notebook(inp)
        await self._client.start_workflow(
            protocol.NOTEBOOK_WORKFLOW_TYPE,
            inp,
            id=workflow_id(project, inp.notebook_id),
            task_queue=CONTROL_TASK_QUEUE,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(sa.STATE, NotebookState.STARTING.value),
                    SearchAttributePair(sa.PROJECT, project),
                    SearchAttributePair(sa.NAME, spec.name),
                    SearchAttributePair(sa.HOST, ""),
                    SearchAttributePair(sa.LABELS, sa.label_terms(spec.labels)),
                    SearchAttributePair(sa.EDITOR, spec.editor.value),
                    SearchAttributePair(sa.FLAVOR, spec.resources.flavor),
                    SearchAttributePair(sa.ID, inp.notebook_id),
                ]
            ),
            static_summary=f"{spec.name} ({project}): {spec.framework.id} {spec.framework.version} "
            f"{spec.editor.value}, {spec.resources.units} x {spec.resources.flavor}",
            # What GET can still show when no worker answers queries (see _from_visibility).
            memo={protocol.MEMO_KEY: notebook.model_dump(mode="json", exclude={"status"})},
            rpc_timeout=RPC_TIMEOUT,
        )
        self._lists.clear()
        return self._present(notebook)

    async def get(
        self, project: str, notebook_id: str, caller: Principal | None = None
    ) -> Notebook:
        """From the status cache (api/status_cache.py): current to within its watcher's
        notice of the workflow's last change, and at once for commands passed on here."""
        _check_id(project, notebook_id)
        return self._visible(await self._cache.read((project, notebook_id)), caller)

    async def wait_for_change(
        self,
        project: str,
        notebook_id: str,
        version: int,
        within_s: float,
        caller: Principal | None = None,
    ) -> Notebook:
        """GET once ``status.version`` is past ``version`` (or after ``within_s`` seconds,
        as it is then); a deleted notebook is a 404."""
        await self.get(project, notebook_id, caller)  # 404 outside the caller's reach
        notebook = await self._cache.wait_for_change((project, notebook_id), version, within_s)
        return self._visible(notebook, caller)

    async def changes(
        self,
        project: str,
        notebook_id: str,
        after_version: int | None,
        within_s: float,
        caller: Principal | None = None,
    ) -> AsyncIterator[Notebook]:
        """Each change of the notebook as GET shows it, once, in order, ending with a
        DELETED one when it is deleted (see StatusCache.changes)."""
        await self.get(project, notebook_id, caller)  # 404 before the stream begins
        return self._changes(project, notebook_id, after_version, within_s, caller)

    async def _changes(
        self,
        project: str,
        notebook_id: str,
        after_version: int | None,
        within_s: float,
        caller: Principal | None,
    ) -> AsyncIterator[Notebook]:
        key = (project, notebook_id)
        async for notebook in self._cache.changes(key, after_version, within_s):
            if not _reached(caller, notebook):
                return  # relabelled out of the token's reach: the stream ends
            yield self._present(notebook, caller)

    def _visible(self, notebook: Notebook, caller: Principal | None) -> Notebook:
        if notebook.status.state == NotebookState.DELETED or not _reached(caller, notebook):
            raise ApiError(404, f"notebook {notebook.id} not found in project {notebook.project}")
        return self._present(notebook, caller)

    async def _add_queue_position(self, notebook: Notebook) -> None:
        """A queued notebook's place in line moves without its workflow knowing."""
        info = notebook.status.info
        if notebook.status.state != NotebookState.STARTING or info.code != codes.QUEUED:
            return
        decision = await self._fleet.position(workflow_id(notebook.project, notebook.id))
        if decision is not None and decision.position is not None:
            info.message = queued_message(decision.position, decision.waiting_for)

    async def _add_live_progress(self, handle, notebook: Notebook) -> None:
        """Fill the numbers of the syncs under way from their activities' last heartbeats.

        The workflow only learns a sync's numbers when it ends; recording every heartbeat
        in history would bloat it, while the server keeps the last heartbeat of each
        pending activity for free."""
        st = notebook.status
        holders: dict[str, VolumeStatus | WorkspaceStatus] = {
            protocol.volume_key(i): v for i, v in enumerate(st.volumes)
        }
        if st.workspace is not None:
            holders[protocol.WORKSPACE_KEY] = st.workspace
        if not any(
            h.last_sync and h.last_sync.state == SyncState.RUNNING for h in holders.values()
        ):
            return
        try:
            desc = await handle.describe(rpc_timeout=QUERY_TIMEOUT)
        except RPCError:
            return  # the numbers are a nicety: the state itself came from the query
        for pending in desc.raw_description.pending_activities:
            sync_id = protocol.parse_sync_activity_id(pending.activity_id)
            if sync_id is None:
                continue
            holder = holders.get(sync_id.key)
            sync = holder.last_sync if holder is not None else None
            if (
                holder is None
                or sync is None
                or sync.state != SyncState.RUNNING
                or sync.direction != sync_id.direction
            ):
                continue
            if not pending.heartbeat_details.payloads:
                continue
            try:
                [detail] = await self._client.data_converter.decode(
                    pending.heartbeat_details.payloads
                )
            except Exception:
                continue
            if not isinstance(detail, dict):
                continue
            live = {k: int(detail[k]) for k in SYNC_COUNTERS if isinstance(detail.get(k), int)}
            holder.last_sync = sync.model_copy(update=live)
            # A datasync job names the workspace "workspace", a volume by its mount path.
            target = holder.mount_path if isinstance(holder, VolumeStatus) else WORKSPACE
            for job in st.datasyncs:
                if job.state == SyncState.RUNNING and job.current == target:
                    for k, v in live.items():
                        setattr(job, k, getattr(job, k) + v)

    async def _from_visibility(self, handle, project: str, notebook_id: str) -> Notebook:
        """No worker answered the query (all down, or restarting): the state recorded at
        the last transition and the spec from the memo are still worth showing."""
        try:
            desc = await handle.describe(rpc_timeout=RPC_TIMEOUT)
        except RPCError as err:
            raise self._rpc_error(err, project, notebook_id) from err
        base = await desc.memo_value(protocol.MEMO_KEY, None)
        state = desc.typed_search_attributes.get(sa.STATE)
        if base is None or state is None:
            raise ApiError(503, "the control plane did not answer in time; try again")
        status = NotebookStatus(
            state=NotebookState(state),
            host=desc.typed_search_attributes.get(sa.HOST) or None,
            info=Info(
                code=STALE_STATUS,
                message="no control-plane worker answered: this is the state at the last "
                "transition, details are unavailable until a worker is back",
            ),
        )
        return Notebook.model_validate({**base, "status": status.model_dump(mode="json")})

    async def list(
        self,
        project: str,
        state: NotebookState | None = None,
        labels: dict[str, str] | None = None,
        caller: Principal | None = None,
    ) -> list[Notebook]:
        labels = dict(labels or {})
        for key, value in (caller.selector if caller else {}).items():
            if labels.setdefault(key, value) != value:
                return []  # asks for notebooks outside the token's reach: there are none
        query = f"WorkflowType = '{protocol.NOTEBOOK_WORKFLOW_TYPE}' AND ExecutionStatus = 'Running' AND NotebookProject = '{project}'"
        # The state filter is applied to each notebook's queried state, not to the
        # NotebookState search attribute: visibility can trail a transition by seconds
        # under load, and a list must not disagree with the GET of the same notebook.
        for term in sa.label_terms(labels or {}):
            query += f" AND NotebookLabels = '{_quote(term)}'"
        ids = await self._lists.ids(self._client, query)
        gate = asyncio.Semaphore(16)

        async def one(notebook_id: str) -> Notebook | None:
            async with gate:
                try:
                    return await self.get(project, notebook_id, caller)
                except ApiError:
                    return None  # deleted between the list and the query

        found = await asyncio.gather(*(one(i) for i in ids))
        notebooks = [n for n in found if n is not None]
        if state is not None:
            notebooks = [n for n in notebooks if n.status.state == state]
        notebooks.sort(key=lambda n: n.created_at)
        return notebooks

    async def _update(
        self, project: str, notebook_id: str, call: Update, arg: Issued, caller: Principal | None
    ) -> Notebook:
        """``call(handle, arg)``: one of temporal_client.notebook_calls' updates."""
        try:
            return await self._update_once(project, notebook_id, call, arg, caller)
        except ApiError as err:
            if err.status != 404:
                raise
            # A workflow closed from outside: a new run takes over, then it takes the command.
            if not await revival.take_over(self._client, project, notebook_id):
                raise
        return await self._update_once(project, notebook_id, call, arg, caller)

    async def _update_once(
        self, project: str, notebook_id: str, call: Update, arg: Issued, caller: Principal | None
    ) -> Notebook:
        handle = self._handle(project, notebook_id)
        if caller is not None:
            arg = arg.model_copy(update={"by": caller.actor, "reach": dict(caller.selector)})
        try:
            notebook = await call(handle, arg, rpc_timeout=UPDATE_TIMEOUT)
        except WorkflowUpdateFailedError as err:
            self._cache.invalidate((project, notebook_id))
            cause = err.cause
            if isinstance(cause, ApplicationError) and cause.type == protocol.CONFLICT:
                raise ApiError(409, cause.message) from err
            if isinstance(cause, ApplicationError) and cause.type == protocol.INVALID:
                field = cause.details[0] if cause.details else None
                raise ApiError(422, cause.message, field=field) from err
            if isinstance(cause, ApplicationError) and cause.type == protocol.FORBIDDEN:
                field = cause.details[0] if cause.details else None
                raise ApiError(403, cause.message, field=field) from err
            if isinstance(cause, ApplicationError) and cause.type == protocol.GONE:
                raise ApiError(
                    404, f"notebook {notebook_id} not found in project {project}"
                ) from err
            raise ApiError(500, f"{call.__name__} failed: {cause or err}") from err
        except RPCError as err:
            self._cache.invalidate((project, notebook_id))
            raise self._rpc_error(err, project, notebook_id) from err
        # The next read here asks the workflow, which has the command by now.
        self._cache.invalidate((project, notebook_id))
        self._lists.clear()
        return self._present(notebook)

    async def start(
        self, project: str, notebook_id: str, caller: Principal | None = None
    ) -> Notebook:
        current = await self.get(project, notebook_id, caller)
        if current.status.state in (
            NotebookState.STOPPED,
            NotebookState.FAILED,
            NotebookState.ERROR,
        ):
            await self._fleet.check_project_quota(project, current.spec.resources.gpu or 0)
        return await self._update(
            project, notebook_id, notebook_calls.start, StartRequest(), caller
        )

    async def stop(
        self, project: str, notebook_id: str, caller: Principal | None = None
    ) -> Notebook:
        return await self._update(project, notebook_id, notebook_calls.stop, StopRequest(), caller)

    async def patch(
        self, project: str, notebook_id: str, req: PatchRequest, caller: Principal | None = None
    ) -> Notebook:
        if req.timeout is not None:
            catalog.check_timeout(self._settings, req.timeout)
        command = PatchCommand(**req.model_dump())
        return await self._update(project, notebook_id, notebook_calls.patch, command, caller)

    async def set_labels(
        self, project: str, notebook_id: str, req: LabelsRequest, caller: Principal | None = None
    ) -> Notebook:
        if caller is not None and (problem := selector_problem(caller.selector, req.labels)):
            # The notebook may not exist at all: only a token that reaches it learns more.
            await self.get(project, notebook_id, caller)
            raise ApiError(403, f"labels: {problem}", field="labels")
        command = LabelsCommand(**req.model_dump())
        return await self._update(project, notebook_id, notebook_calls.set_labels, command, caller)

    async def datasync(
        self, project: str, notebook_id: str, req: DataSyncRequest, caller: Principal | None = None
    ) -> Notebook:
        command = DataSyncCommand(**req.model_dump())
        return await self._update(project, notebook_id, notebook_calls.datasync, command, caller)

    async def rotate_token(
        self, project: str, notebook_id: str, caller: Principal | None = None
    ) -> Notebook:
        return await self._update(
            project, notebook_id, notebook_calls.rotate_token, RotateTokenRequest(), caller
        )

    async def delete(
        self,
        project: str,
        notebook_id: str,
        keep_workspace: bool,
        caller: Principal | None = None,
        force: bool = False,
    ) -> Notebook:
        req = DeleteRequest(keep_workspace=keep_workspace, force=force)
        return await self._update(project, notebook_id, notebook_calls.delete, req, caller)

    @staticmethod
    def _rpc_error(err: RPCError, project: str, notebook_id: str) -> ApiError:
        if err.status == RPCStatusCode.NOT_FOUND:
            return ApiError(404, f"notebook {notebook_id} not found in project {project}")
        if err.status in (
            RPCStatusCode.DEADLINE_EXCEEDED,
            RPCStatusCode.UNAVAILABLE,
            RPCStatusCode.CANCELLED,
        ):
            return ApiError(
                503, f"the control plane did not answer in time ({err.message}); try again"
            )
        return ApiError(502, f"the control plane refused the request: {err.message}")


class _ListCache:
    """The ids a visibility query lists, for a second, one request at a time per query:
    lists trail a transition by that much more, and a page of them polled by many costs
    the server one query a second."""

    TTL_S = 1.0

    def __init__(self) -> None:
        self._found: dict[str, tuple[float, list[str]]] = {}
        self._pending: dict[str, asyncio.Future[list[str]]] = {}

    def clear(self) -> None:
        """A change made here: this process's next list asks visibility again."""
        self._found.clear()

    async def ids(self, client: Client, query: str) -> list[str]:
        now = time.monotonic()
        found = self._found.get(query)
        if found is not None and now - found[0] < self.TTL_S:
            return found[1]
        pending = self._pending.get(query)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch(client, query))
            self._pending[query] = pending
        return list(await asyncio.shield(pending))

    async def _fetch(self, client: Client, query: str) -> list[str]:
        try:
            ids = [
                execution.id.rsplit("/", 1)[-1]
                async for execution in client.list_workflows(query, rpc_timeout=RPC_TIMEOUT)
            ]
            now = time.monotonic()
            self._found = {q: f for q, f in self._found.items() if now - f[0] < self.TTL_S}
            self._found[query] = (now, ids)
            return ids
        finally:
            del self._pending[query]


def _closed_view(notebook: Notebook, desc: WorkflowExecutionDescription) -> Notebook:
    """A notebook whose workflow was closed from outside, until a run takes it over
    (within a reconcile interval; any command does it at once): not served, not RUNNING."""
    if notebook.status.state == NotebookState.DELETED:
        return notebook
    how = desc.status.name.lower().replace("_", " ") if desc.status else "closed"
    when = desc.close_time.isoformat(timespec="seconds") if desc.close_time else "?"
    status = notebook.status.model_copy(
        update={
            "state": NotebookState.ERROR,
            "endpoint": None,
            "info": Info(
                code=codes.WORKFLOW_CLOSED,
                message=f"its workflow was {how} from outside the platform at {when} while "
                f"it was {notebook.status.state.value}; the platform is saving and removing "
                "what it left running. Start or delete it",
            ),
        }
    )
    return notebook.model_copy(update={"status": status})


def _check_id(project: str, notebook_id: str) -> None:
    """A malformed id is a 404 before any lookup (and before it makes a cache entry)."""
    if not valid_notebook_id(notebook_id):
        raise ApiError(404, f"notebook {notebook_id} not found in project {project}")


def _reached(caller: Principal | None, notebook: Notebook) -> bool:
    return caller is None or reaches(caller.selector, notebook.spec.labels)


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")
