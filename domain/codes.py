"""``status.info.code`` values and the error types activities raise to carry them."""

from __future__ import annotations

# Terminal codes of a run.
EXITED = "EXITED"  # the editor exited 0
STOPPED_BY_USER = "STOPPED_BY_USER"
TIMEOUT = "TIMEOUT"
HOST_LOST = "HOST_LOST"
# Its workflow was closed from outside the platform (terminated, timed out): the run was
# saved and removed by the platform, and the notebook waits in ERROR for a start or delete.
WORKFLOW_CLOSED = "WORKFLOW_CLOSED"
# A push failed for a reason retries cannot fix: what could not be saved stays on the host.
SYNC_FAILED = "SYNC_FAILED"


def exit_code(code: int) -> str:
    return f"EXIT_CODE_{code}"


# Failures, used both as status codes and as ApplicationError types so a workflow can
# map an activity failure to a state without parsing messages.
DATA_SYNC_FAILED = "DATA_SYNC_FAILED"  # the user's data cannot be read or written: FAILED
STORAGE_UNAVAILABLE = "STORAGE_UNAVAILABLE"  # the platform's storage is down: ERROR
IMAGE_NOT_FOUND = "IMAGE_NOT_FOUND"
ENGINE_UNAVAILABLE = "ENGINE_UNAVAILABLE"
EDITOR_NOT_READY = "EDITOR_NOT_READY"
LAUNCH_FAILED = "LAUNCH_FAILED"
QUOTA_EXCEEDED = "QUOTA_EXCEEDED"  # the project's quota: FAILED
NO_CAPACITY = "NO_CAPACITY"  # no host can ever fit the request: FAILED
# The spec asks for what the rules forbid (a reserved variable, storage its project may not
# use), caught on the host for a spec stored before the rule: FAILED
SPEC_REFUSED = "SPEC_REFUSED"
INTERNAL_ERROR = "INTERNAL_ERROR"

# Informational codes while a phase is under way.
QUEUED = "QUEUED"
SYNC_RETRYING = "SYNC_RETRYING"

# Failures that make the notebook FAILED (the user's doing) rather than ERROR (ours).
USER_FAILURES = frozenset({DATA_SYNC_FAILED, QUOTA_EXCEEDED, NO_CAPACITY, SPEC_REFUSED})


def is_user_failure(code: str | None) -> bool:
    """FAILED (the user's data or process) rather than ERROR (the platform)."""
    return code in USER_FAILURES or (code or "").startswith("EXIT_CODE_")
