"""What a notebook reports about itself (the ``status`` of the REST resource)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from domain.access import Actor
from domain.ids import workspace_prefix
from domain.spec import NotebookSpec, Permission
from domain.states import NotebookState

if TYPE_CHECKING:
    from domain.messages import NotebookInput


class Info(BaseModel):
    code: str | None = None
    message: str = ""


class Transition(BaseModel):
    """One change of state, as the workflow made it: what a watcher that was not looking
    at that moment still learns (the event stream sends each one once)."""

    state: NotebookState
    info: Info = Field(default_factory=Info)
    at: datetime
    # status.version of the workflow task that made it: every status read at this
    # version or later includes it.
    version: int


# How many of the latest transitions a status keeps.
TRANSITIONS_KEPT = 8


class SyncState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class SyncCounters(BaseModel):
    """What a sync did: the same numbers for one target and for a whole datasync."""

    files_total: int = 0
    bytes_total: int = 0
    files_done: int = 0
    bytes_done: int = 0
    files_skipped: int = 0
    files_failed: int = 0
    files_deleted: int = 0
    files_seeded: int = 0  # copied from the host's volume cache instead of downloaded
    started_at: datetime | None = None
    ended_at: datetime | None = None
    message: str = ""


class SyncProgress(SyncCounters):
    direction: str  # "pull" or "push"
    state: SyncState


# The numbers a sync reports, shared by SyncProgress, DataSync and the sync heartbeats.
SYNC_COUNTERS = tuple(
    name for name, field in SyncCounters.model_fields.items() if field.annotation is int
)


class DataSync(SyncCounters):
    """A sync asked for while RUNNING (``POST …/datasync``); totals are summed over its
    targets, and include the live numbers of the target being synced."""

    id: str
    direction: str  # "pull" or "push"
    volume: str | None = None  # a mount path, "workspace", or None for every target
    state: SyncState = SyncState.QUEUED
    requested_at: datetime
    targets: list[str] = Field(default_factory=list)  # "workspace" or a volume's mount path
    current: str | None = None  # the target being synced now


class VolumeStatus(BaseModel):
    mount_path: str
    bucket: str
    alias: str
    prefix: str
    permission: Permission
    # True once a pull completed: only then may a push (which could delete remote
    # objects for rwd) run, so a partial pull never overwrites the remote copy (I1).
    pulled: bool = False
    # A pull while RUNNING did not finish: the stop finishes it before pushing.
    repull: bool = False
    last_sync: SyncProgress | None = None


class WorkspaceStatus(BaseModel):
    bucket: str
    prefix: str
    restored: bool = False  # fully restored at the last start (or new): it may be pushed (I1)
    saved: bool = False  # a copy exists in object storage
    last_saved_at: datetime | None = None
    last_sync: SyncProgress | None = None
    # While RUNNING, the next periodic checkpoint (an incremental push of the workspace).
    next_checkpoint_at: datetime | None = None


class UnsavedItem(BaseModel):
    """One tree a push could not save, for a reason retries cannot fix."""

    target: str  # "workspace" or a volume's mount path
    path: str | None = None  # where it is on the host
    files: int | None = None
    bytes: int | None = None
    error: str = ""


class HostData(BaseModel):
    """The notebook's data left on a host and not known to be in object storage: a push
    that failed for good (its items say what), or a host lost mid-run (nothing is known
    of what it holds). It is pushed before the notebook starts again, by a datasync push,
    or by a delete; only ``DELETE ?force=true`` drops it."""

    host: str
    reason: str
    since: datetime
    items: list[UnsavedItem] = Field(default_factory=list)


class NotebookStatus(BaseModel):
    state: NotebookState
    info: Info = Field(default_factory=Info)
    # The gateway's address for people (set by the API from `endpoint`; never in history).
    url: str | None = None
    # Where the editor answers on its host now: what the gateway forwards to.
    endpoint: str | None = None
    host: str | None = None
    container: str | None = None
    last_started_at: datetime | None = None
    last_stopped_at: datetime | None = None
    volumes: list[VolumeStatus] = Field(default_factory=list)
    workspace: WorkspaceStatus | None = None
    # While RUNNING: when the timeout stops it, and minutes billed (recorded) so far.
    auto_stop_at: datetime | None = None
    auto_restart: bool = False
    billed_minutes_current: int = 0
    billed_minutes_total: int = 0
    # Syncs asked for while RUNNING, oldest first (the latest few).
    datasyncs: list[DataSync] = Field(default_factory=list)
    # Who issued the latest command (or created it): a token's id and name, no secret.
    last_command_by: Actor | None = None
    # The notebook's link token is derived from this; a rotation bumps it, and every link
    # and gateway session of an older generation stops working.
    token_generation: int = 0
    # Data left on a host that is not (known to be) in object storage; see HostData.
    left_on_host: HostData | None = None
    # The latest state changes, oldest first (at most TRANSITIONS_KEPT).
    transitions: list[Transition] = Field(default_factory=list)
    # Grows with every change the workflow records (its history length, summed over the
    # runs before this one): what long polls and event streams resume from. Set when the
    # status is read; 0 when not known (a status from visibility).
    version: int = 0


class Notebook(BaseModel):
    """The REST resource: identity, spec and status."""

    id: str
    project: str
    created_at: datetime
    updated_at: datetime
    spec: NotebookSpec
    image: str
    status: NotebookStatus


def initial_status(inp: NotebookInput) -> NotebookStatus:
    """A new notebook: STARTING at once, with nothing restored yet and nothing to restore."""
    return NotebookStatus(
        state=NotebookState.STARTING,
        info=Info(message="notebook created"),
        volumes=[
            VolumeStatus(
                mount_path=v.mount_path,
                bucket=v.bucket,
                alias=v.alias,
                prefix=v.prefix,
                permission=v.permission,
            )
            for v in inp.spec.volumes
        ],
        workspace=WorkspaceStatus(
            bucket=inp.workspace_bucket,
            prefix=workspace_prefix(inp.project, inp.notebook_id),
            restored=True,
        ),
        last_command_by=inp.created_by,
    )


def initial_notebook(inp: NotebookInput) -> Notebook:
    return Notebook(
        id=inp.notebook_id,
        project=inp.project,
        created_at=inp.created_at,
        updated_at=inp.created_at,
        spec=inp.spec,
        image=inp.image,
        status=initial_status(inp),
    )
