"""Inputs and outputs of the notebook workflow, its updates and its activities.

Nothing here is secret: storage credentials and editor tokens are derived or looked up
by the workers from their own configuration, never carried in workflow history (I6).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field, StrictBool, field_validator

from domain.access import Actor
from domain.billing import PeriodUsage, UsageRecord
from domain.fleet import Allocation, CapacityRequest, FlavorSpec, FleetState, HostInventory, Quotas
from domain.ids import valid_notebook_id, valid_project
from domain.spec import LABELS_SCHEMA, NotebookSpec, Volume, check_labels, unicode_text
from domain.states import NotebookState
from domain.status import Info, NotebookStatus, SyncProgress


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
    # A RUNNING notebook's usage reaches the ledger at least this often.
    checkpoint_s: float = 900.0
    # A RUNNING notebook's workspace is pushed this often (0: only at stop), so a lost
    # host loses at most this much work.
    workspace_checkpoint_s: float = 900.0
    # Continue-as-new past this many history events (Temporal warns at 10,240).
    max_history_events: int = 4000
    # Tries of a usage write as a local activity (patches.USAGE_LOCAL; 1, 2, 4 s apart): a
    # ledger that has not answered by then is waited for on the control task queue.
    local_ledger_attempts: int = 4


class RunSettings(BaseModel):
    """What a run was started with: PATCHed values apply from the next start."""

    timeout_s: int
    auto_restart: bool


class BillingState(BaseModel):
    period: int = 0  # RUNNING periods begun
    started_at: datetime | None = None  # start of the current period; None when not RUNNING
    seq: int = 0  # records decided for the current period
    billed: int = 0  # minutes decided for the current period
    billed_until: datetime | None = None  # the current period is billed up to here
    last_seen_running_at: datetime | None = None  # from the watch's heartbeats
    total_minutes: int = 0
    periods: list[PeriodUsage] = Field(default_factory=list)  # the latest ones
    pending: list[UsageRecord] = Field(default_factory=list)  # decided, not yet in the ledger


class Ending(BaseModel):
    """How the current run ends, decided by whoever ended it (user, editor, failure)."""

    state: NotebookState
    info: Info


class Carry(BaseModel):
    """The notebook workflow's whole state: what a run hands to the next across
    continue-as-new, passed whole. Fields after ``allocation`` came in 2026-12; a run
    from before carries none of them, and their defaults are what it had."""

    status: NotebookStatus
    updated_at: datetime
    billing: BillingState
    task_queue: str | None = None  # the host's queue while a container may exist there
    container_launched: bool = False
    run: RunSettings | None = None
    # Capacity asked of the fleet (granted or queued) and not yet given back (I5).
    capacity_held: bool = False
    allocation: Allocation | None = None
    ending: Ending | None = None
    restart_after_stop: bool = False
    delete_after_stop: bool = False  # a delete that arrived while STOPPING
    keep_workspace: bool = False
    force_delete: bool = False
    retry_save: bool = False  # a datasync push of a SYNC_FAILED notebook asked for it
    dropped: str = ""  # what a forced delete dropped
    # Datasync ids waiting for the RUNNING phase's sync loop, in order.
    sync_queue: list[str] = Field(default_factory=list)
    # The history events of the runs before this one, so status.version keeps growing
    # across continue-as-new and take-over.
    version_base: int = 0

    def forget_intents(self) -> None:
        """What a run taking over from a closed one does not inherit: the commands and
        endings that closed run was acting on."""
        self.ending = None
        self.restart_after_stop = self.delete_after_stop = False
        self.keep_workspace = self.force_delete = self.retry_save = False
        self.dropped = ""
        self.sync_queue = []


def _check_project(value: str) -> str:
    if not valid_project(value):
        raise ValueError(f"not a project name: {value!r}")
    return value


def _check_notebook_id(value: str) -> str:
    if not valid_notebook_id(value):
        raise ValueError(f"not a notebook id: {value!r}")
    return value


class ClosedRun(BaseModel):
    """How the notebook's previous workflow run ended when something outside the platform
    closed it (the Web UI's Terminate, a run timeout): the next run starts from that run's
    last state and saves and removes what it left running."""

    status: str  # TERMINATED, TIMED_OUT, FAILED or CANCELED
    closed_at: datetime


class _Ids(BaseModel):
    """Ids become paths, container names and S3 keys: checked wherever a workflow or an
    activity takes them in, not only at the API (valid ids, as every stored one is, pass)."""

    project: str
    notebook_id: str

    @field_validator("project")
    @classmethod
    def _project(cls, value: str) -> str:
        return _check_project(value)

    @field_validator("notebook_id")
    @classmethod
    def _notebook_id(cls, value: str) -> str:
        return _check_notebook_id(value)


class NotebookInput(_Ids):
    project: str
    notebook_id: str
    spec: NotebookSpec
    image: str
    workspace_bucket: str
    created_at: datetime
    tuning: Tuning = Field(default_factory=Tuning)
    # Who created it (the audit's first entry; status.last_command_by until a command).
    created_by: Actor | None = None
    # Carried over by continue-as-new; None for a new notebook (which starts at once).
    carry: Carry | None = None
    # Set only on the run that takes over from one closed from outside (temporal_client/revival.py).
    closed: ClosedRun | None = None


class Issued(BaseModel):
    """What every command carries besides its own fields: who asked (audit: it is in the
    update's input in history and in status.last_command_by), and the labels the asking
    token is limited to, which the workflow's validator checks against the notebook's
    labels at the moment it accepts the command (outside them: 404, as for any notebook
    the token cannot see). Histories from before these existed replay with the defaults."""

    by: Actor | None = None
    reach: dict[str, str] = Field(default_factory=dict)


class StartRequest(Issued):
    pass


class StopRequest(Issued):
    pass


class DeleteRequest(Issued):
    keep_workspace: bool = False
    # Drop what could not be saved (status.left_on_host) instead of failing the delete.
    force: bool = False


class RotateTokenRequest(Issued):
    """``POST …/token/rotate``: a new generation of the notebook's link token."""


class PatchRequest(BaseModel):
    # The bounds of NotebookSpec.timeout (the operator's range is checked at the API).
    timeout: Annotated[int, Field(ge=60, le=30 * 24 * 3600)] | None = None
    # true or false, not 0/1 or "yes" (the document says boolean).
    timeout_auto_restart: StrictBool | None = None


class DataSyncRequest(BaseModel):
    """``POST …/datasync``: sync now, while RUNNING."""

    direction: Literal["push", "pull"]
    # A volume's mount path, or "workspace"; None: every volume that allows the direction
    # (and the workspace, for a push).
    volume: str | None = None

    @field_validator("volume")
    @classmethod
    def _volume(cls, value: str | None) -> str | None:
        return value if value is None else unicode_text(value)


class LabelsRequest(BaseModel):
    """``PUT …/labels``: the notebook's labels from now on (an empty map removes them all)."""

    labels: dict[str, str] = Field(json_schema_extra=LABELS_SCHEMA)

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        return check_labels(labels)


class PatchCommand(PatchRequest, Issued):
    pass


class DataSyncCommand(DataSyncRequest, Issued):
    pass


class LabelsCommand(LabelsRequest, Issued):
    pass


class NotebookRef(_Ids):
    project: str
    notebook_id: str


class VolumeSyncInput(BaseModel):
    ref: NotebookRef
    index: int
    volume: Volume
    # A push that deletes nothing remote, even for rwd: what a lost host or a failed push
    # left behind is added to storage, never mirrored over what others wrote since.
    keep_remote: bool = False
    # Push the volume's preserved files (/workspace/.ainb-preserved/<mount>) to the
    # volume's own storage, under .ainb-preserved/<notebook id>/: a delete that drops the
    # workspace must not drop the local versions a pull set aside.
    preserved: bool = False


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
    # What the fleet granted: the container gets exactly this (CPUs, memory, GPU ids).
    allocation: Allocation | None = None
    # For launch_editor, which also waits for the editor: how long, and where it answers.
    ready_timeout_s: float = 180.0
    ready_path: str = "/api/status"


class LaunchResult(BaseModel):
    container: str
    url: str
    port: int
    started_at: datetime


class ReadyInput(BaseModel):
    ref: NotebookRef
    port: int
    timeout_s: float
    path: str = "/api/status"  # the editor's readiness path (domain.gateway.ready_path)


class WatchInput(BaseModel):
    ref: NotebookRef
    # Return "still running" after this long, so the workflow can checkpoint usage.
    max_s: float


class WatchResult(BaseModel):
    running: bool = False  # still running after max_s
    exit_code: int | None = None  # None when not running: it vanished without an exit code
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


class FleetInput(BaseModel):
    flavors: dict[str, FlavorSpec]
    quotas: Quotas = Field(default_factory=Quotas)
    # A host silent this long is down: nothing new is placed there.
    host_down_after_s: float = 30.0
    max_history_events: int = 4000
    state: FleetState | None = None  # carried over by continue-as-new


class HostView(BaseModel):
    name: str
    state: Literal["up", "down"]
    last_seen: datetime
    down_since: datetime | None = None
    inventory: HostInventory
    free_cpus: float
    free_memory_gib: float
    free_gpu_ids: list[str]
    allocations: list[Allocation]


class FleetView(BaseModel):
    hosts: list[HostView]
    queue: list[CapacityRequest]
    # per flavor: units that could start right now on one host, and requests queued
    flavors: dict[str, dict[str, int]]
