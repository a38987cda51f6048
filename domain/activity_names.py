"""Activity names, shared so workflows can call activities without importing their code
(which pulls in docker and boto3)."""

REQUEST_CAPACITY = "request_capacity"
RELEASE_CAPACITY = "release_capacity"
FIND_GONE_NOTEBOOKS = "find_gone_notebooks"
DELETE_WORKSPACE = "delete_workspace"
RECORD_USAGE = "record_usage"

PULL_VOLUME = "pull_volume"
PUSH_VOLUME = "push_volume"
RESTORE_WORKSPACE = "restore_workspace"
SAVE_WORKSPACE = "save_workspace"
LAUNCH_CONTAINER = "launch_container"
WAIT_EDITOR_READY = "wait_editor_ready"
LAUNCH_EDITOR = "launch_editor"  # launch, then wait for the editor (patches.LAUNCH_WAITS_READY)
WATCH_CONTAINER = "watch_container"
STOP_CONTAINER = "stop_container"
REMOVE_LOCAL_DATA = "remove_local_data"
