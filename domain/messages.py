"""Inputs and outputs of the notebook workflow, its updates and its activities.

Nothing here is secret: storage credentials and editor tokens are derived or looked up
by the workers from their own configuration, never carried in workflow history (I6).
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from domain.spec import NotebookSpec, Resources, Volume
from domain.status import NotebookStatus, SyncProgress


class Tuning(BaseModel):
    """Timeouts the workflow applies; the API sets them from its settings at create."""

    heartbeat_timeout_s: float = 30.0
    # How long a host may take to pick up work before it is considered lost.
    host_pickup_timeout_s: float = 120.0
    # Attempts for a start-time sync against unreachable storage before ERROR.
    start_sync_attempts: int = 5
    launch_attempts: int = 4
    ready_timeout_s: float = 180.0
    stop_grace_s: float = 20.0
    push_retry_max_interval_s: float = 60.0


class NotebookInput(BaseModel):
    project: str
    notebook_id: str
    spec: NotebookSpec
    image: str
    workspace_bucket: str
    created_at: datetime
    tuning: Tuning = Field(default_factory=Tuning)
    # Carried over by continue-as-new; None for a new notebook (which starts at once).
    status: NotebookStatus | None = None
    updated_at: datetime | None = None


class StartRequest(BaseModel):
    pass


class StopRequest(BaseModel):
    pass


class DeleteRequest(BaseModel):
    keep_workspace: bool = False


class NotebookRef(BaseModel):
    project: str
    notebook_id: str


class PlaceInput(BaseModel):
    ref: NotebookRef
    resources: Resources


class Placement(BaseModel):
    host: str
    task_queue: str


class VolumeSyncInput(BaseModel):
    ref: NotebookRef
    index: int
    volume: Volume


class WorkspaceSyncInput(BaseModel):
    ref: NotebookRef
    bucket: str
    prefix: str
    # Mount paths of volumes, relative to /workspace: their data is never part of the workspace.
    exclude: list[str] = Field(default_factory=list)
    # Propagate deletions to the saved copy: only once there is one, restored at this start.
    mirror: bool = True


class LaunchInput(BaseModel):
    ref: NotebookRef
    spec: NotebookSpec
    image: str


class LaunchResult(BaseModel):
    container: str
    url: str
    port: int
    started_at: datetime


class ReadyInput(BaseModel):
    ref: NotebookRef
    port: int
    timeout_s: float


class WatchResult(BaseModel):
    exit_code: int | None  # None: the container vanished without an exit code
    last_seen_running_at: datetime | None = None


class StopContainerInput(BaseModel):
    ref: NotebookRef
    grace_s: float


class StopContainerResult(BaseModel):
    existed: bool
    exit_code: int | None = None


class DeleteWorkspaceInput(BaseModel):
    ref: NotebookRef
    bucket: str
    prefix: str


class SyncResult(BaseModel):
    progress: SyncProgress
