"""Deterministic names: one notebook maps to one workflow, one container, one directory."""

from __future__ import annotations

import re

_PROJECT = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
_NOTEBOOK_ID = re.compile(r"^[a-f0-9]{32}$")

CONTROL_TASK_QUEUE = "ainb-control"
LABEL_PREFIX = "ai.ainb."


def valid_project(project: str) -> bool:
    return bool(_PROJECT.match(project))


def valid_notebook_id(notebook_id: str) -> bool:
    return bool(_NOTEBOOK_ID.match(notebook_id))


def workflow_id(project: str, notebook_id: str) -> str:
    return f"notebook/{project}/{notebook_id}"


def notebook_of(wid: str) -> tuple[str, str] | None:
    """(project, notebook id) of a notebook's workflow id; None for any other id."""
    kind, _, rest = wid.partition("/")
    project, _, notebook_id = rest.partition("/")
    if kind != "notebook" or not valid_project(project) or not valid_notebook_id(notebook_id):
        return None
    return project, notebook_id


def container_name(notebook_id: str) -> str:
    return f"ainb-nb-{notebook_id}"


def host_task_queue(host: str) -> str:
    return f"ainb-host-{host}"


def workspace_prefix(project: str, notebook_id: str) -> str:
    return f"projects/{project}/notebooks/{notebook_id}/workspace"
