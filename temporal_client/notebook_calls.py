"""Typed calls to a notebook workflow's updates and queries, for the processes that
cannot import the workflow (the API, the Python client, the workers' revival): one
function per handler, its name, argument and answer spelled once, here.

Each takes the notebook's workflow handle. Updates raise what ``execute_update`` does:
a validator's rejection is a WorkflowUpdateFailedError whose cause is an
ApplicationError of a domain.protocol error type."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio.client import WorkflowHandle

from domain import protocol as P
from domain.messages import (
    DataSyncCommand,
    DeleteRequest,
    LabelsCommand,
    NotebookInput,
    PatchCommand,
    RotateTokenRequest,
    StartRequest,
    StopRequest,
)
from domain.status import Notebook

Handle = WorkflowHandle[Any, Any]

# ------------------------------------------------------------------ queries


async def get(handle: Handle, *, rpc_timeout: timedelta | None = None) -> Notebook:
    """The notebook as its workflow knows it (a closed workflow still answers, by
    replaying its history: whether it lives is told by describing it)."""
    return await handle.query(P.QUERY_GET, result_type=Notebook, rpc_timeout=rpc_timeout)


async def carry(handle: Handle, *, rpc_timeout: timedelta | None = None) -> NotebookInput:
    """All the run would hand to the next: what a run taking over from it starts from."""
    return await handle.query(P.QUERY_CARRY, result_type=NotebookInput, rpc_timeout=rpc_timeout)


# ------------------------------------------------------------------ updates


async def _update(handle: Handle, name: str, arg: Any, rpc_timeout: timedelta | None) -> Notebook:
    return await handle.execute_update(name, arg, result_type=Notebook, rpc_timeout=rpc_timeout)


async def start(
    handle: Handle, req: StartRequest, *, rpc_timeout: timedelta | None = None
) -> Notebook:
    return await _update(handle, P.UPDATE_START, req, rpc_timeout)


async def stop(
    handle: Handle, req: StopRequest, *, rpc_timeout: timedelta | None = None
) -> Notebook:
    return await _update(handle, P.UPDATE_STOP, req, rpc_timeout)


async def patch(
    handle: Handle, req: PatchCommand, *, rpc_timeout: timedelta | None = None
) -> Notebook:
    return await _update(handle, P.UPDATE_PATCH, req, rpc_timeout)


async def datasync(
    handle: Handle, req: DataSyncCommand, *, rpc_timeout: timedelta | None = None
) -> Notebook:
    return await _update(handle, P.UPDATE_DATASYNC, req, rpc_timeout)


async def set_labels(
    handle: Handle, req: LabelsCommand, *, rpc_timeout: timedelta | None = None
) -> Notebook:
    return await _update(handle, P.UPDATE_SET_LABELS, req, rpc_timeout)


async def rotate_token(
    handle: Handle, req: RotateTokenRequest, *, rpc_timeout: timedelta | None = None
) -> Notebook:
    return await _update(handle, P.UPDATE_ROTATE_TOKEN, req, rpc_timeout)


async def delete(
    handle: Handle, req: DeleteRequest, *, rpc_timeout: timedelta | None = None
) -> Notebook:
    return await _update(handle, P.UPDATE_DELETE, req, rpc_timeout)
