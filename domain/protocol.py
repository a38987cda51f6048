"""Names shared across processes: what the workflows, the API, the workers and the
activities must spell the same way, in one place.

Every value here is recorded in workflow histories (update, query and signal names,
activity ids, workflow types) or read back from them by the API (error types, the memo
key, activity ids). Never change a value: running workflows and recorded histories
(tests/unit/histories) depend on them. A new name is added; an old one stays as it is.

Activity names are in domain/activity_names.py. Pure: no I/O, no Temporal client.
"""

from __future__ import annotations

from typing import NamedTuple

# ----------------------------------------------------------------- workflows

# The notebook workflow's type: the API starts notebooks under it, and lists them by it.
NOTEBOOK_WORKFLOW_TYPE = "Notebook"
# The memo key under which the API leaves a new notebook's spec (what GET shows when no
# worker answers a query); a run taking over from a closed one carries it on.
MEMO_KEY = "notebook"

FLEET_WORKFLOW_TYPE = "Fleet"
# The one fleet workflow of an installation.
FLEET_WORKFLOW_ID = "ainb-fleet"

# ---------------------------------------------------- the notebook workflow's handlers

# Updates (each takes its request and answers the Notebook).
UPDATE_START = "start"
UPDATE_STOP = "stop"
UPDATE_PATCH = "patch"
UPDATE_DATASYNC = "datasync"
UPDATE_SET_LABELS = "set_labels"
UPDATE_ROTATE_TOKEN = "rotate_token"
UPDATE_DELETE = "delete"
# Queries: the Notebook; the whole state a run would hand to the next (NotebookInput).
QUERY_GET = "get"
QUERY_CARRY = "carry"
# Signal: the fleet tells a queued notebook the capacity it waits for is its.
SIGNAL_CAPACITY_GRANTED = "capacity_granted"

NOTEBOOK_UPDATES = (
    UPDATE_START,
    UPDATE_STOP,
    UPDATE_PATCH,
    UPDATE_DATASYNC,
    UPDATE_SET_LABELS,
    UPDATE_ROTATE_TOKEN,
    UPDATE_DELETE,
)
NOTEBOOK_QUERIES = (QUERY_GET, QUERY_CARRY)
NOTEBOOK_SIGNALS = (SIGNAL_CAPACITY_GRANTED,)

# ------------------------------------------------------- the fleet workflow's handlers

FLEET_UPDATE_REQUEST = "request"
FLEET_UPDATE_RELEASE = "release"
FLEET_UPDATE_REGISTER_HOST = "register_host"
FLEET_UPDATE_HOST_HEARTBEAT = "host_heartbeat"
FLEET_UPDATE_CONFIGURE = "configure"
FLEET_QUERY_VIEW = "view"
FLEET_QUERY_POSITION = "position"
FLEET_QUERY_PROJECT_GPUS = "project_gpus"

FLEET_UPDATES = (
    FLEET_UPDATE_REQUEST,
    FLEET_UPDATE_RELEASE,
    FLEET_UPDATE_REGISTER_HOST,
    FLEET_UPDATE_HOST_HEARTBEAT,
    FLEET_UPDATE_CONFIGURE,
)
FLEET_QUERIES = (FLEET_QUERY_VIEW, FLEET_QUERY_POSITION, FLEET_QUERY_PROJECT_GPUS)

# ------------------------------------------------------------------ error types

# ApplicationError.type of an update's rejection, as the API answers it.
CONFLICT = "CONFLICT"  # 409: not in this state
INVALID = "INVALID"  # 422: bad input; details[0] names the field
FORBIDDEN = "FORBIDDEN"  # 403: beyond the caller's token; details[0] names the field
GONE = "GONE"  # 404: deleted, or out of the caller's reach

ERROR_TYPES = (CONFLICT, INVALID, FORBIDDEN, GONE)

# --------------------------------------------------------------- activity ids

# A sync activity's id names what it syncs and which way, so that the API can match the
# pending activities of a description (their last heartbeats: live progress) to them:
# "sync:<key>:<direction>:<suffix>", key "workspace" or "volume-<index>".
SYNC_ACTIVITY = "sync"
WORKSPACE_KEY = "workspace"


def volume_key(index: int) -> str:
    """The key of the notebook's volume at ``index`` (its place in the spec)."""
    return f"volume-{index}"


def sync_key(index: int | None) -> str:
    """The key of what a sync moves: the workspace (None) or the volume at ``index``."""
    return WORKSPACE_KEY if index is None else volume_key(index)


def sync_activity_id(key: str, direction: str, suffix: str) -> str:
    """The id of a sync activity: ``suffix`` makes it unique within the run."""
    return f"{SYNC_ACTIVITY}:{key}:{direction}:{suffix}"


class SyncActivityId(NamedTuple):
    key: str  # WORKSPACE_KEY or volume_key(i)
    direction: str  # "push" or "pull"
    suffix: str


def parse_sync_activity_id(activity_id: str) -> SyncActivityId | None:
    """What a sync activity's id names; None for any other activity."""
    parts = activity_id.split(":")
    if len(parts) != 4 or parts[0] != SYNC_ACTIVITY:
        return None
    return SyncActivityId(parts[1], parts[2], parts[3])
