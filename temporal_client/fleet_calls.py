"""Typed calls to the fleet workflow's updates and queries, for the processes that do
not import the workflow (the API, the host agents, the control activities): one
function per handler, its name, argument and answer spelled once, here."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio.client import Client, WorkflowHandle

from domain import protocol as P
from domain.fleet import CapacityRequest, Decision, HostInventory
from domain.messages import FleetInput, FleetView

Handle = WorkflowHandle[Any, Any]


def fleet(client: Client) -> Handle:
    """The installation's one fleet workflow."""
    return client.get_workflow_handle(P.FLEET_WORKFLOW_ID)


# ------------------------------------------------------------ notebooks' updates


async def request(
    handle: Handle, req: CapacityRequest, *, rpc_timeout: timedelta | None = None
) -> Decision:
    """Capacity for a notebook: granted, queued (and where) or refused; idempotent."""
    return await handle.execute_update(
        P.FLEET_UPDATE_REQUEST, req, result_type=Decision, rpc_timeout=rpc_timeout
    )


async def release(handle: Handle, notebook: str, *, rpc_timeout: timedelta | None = None) -> bool:
    """Give back what the notebook (its workflow id) holds or waits for: whether it had any."""
    return await handle.execute_update(
        P.FLEET_UPDATE_RELEASE, notebook, result_type=bool, rpc_timeout=rpc_timeout
    )


# ---------------------------------------------------------------- hosts' updates


async def register_host(
    handle: Handle, inventory: HostInventory, *, rpc_timeout: timedelta | None = None
) -> None:
    await handle.execute_update(P.FLEET_UPDATE_REGISTER_HOST, inventory, rpc_timeout=rpc_timeout)


async def host_heartbeat(
    handle: Handle, host: str, *, rpc_timeout: timedelta | None = None
) -> bool:
    """False: the fleet does not count on this host; it must reconcile and register."""
    return await handle.execute_update(
        P.FLEET_UPDATE_HOST_HEARTBEAT, host, result_type=bool, rpc_timeout=rpc_timeout
    )


async def configure(
    handle: Handle, inp: FleetInput, *, rpc_timeout: timedelta | None = None
) -> None:
    """New flavors, quotas or timings from the operator's configuration."""
    await handle.execute_update(P.FLEET_UPDATE_CONFIGURE, inp, rpc_timeout=rpc_timeout)


# ------------------------------------------------------------------------ reads


async def view(handle: Handle, *, rpc_timeout: timedelta | None = None) -> FleetView:
    return await handle.query(P.FLEET_QUERY_VIEW, result_type=FleetView, rpc_timeout=rpc_timeout)


async def position(
    handle: Handle, notebook: str, *, rpc_timeout: timedelta | None = None
) -> Decision | None:
    """A queued notebook's place in line (None when it is not queued)."""
    return await handle.query(
        P.FLEET_QUERY_POSITION,
        notebook,
        result_type=Decision | None,  # type: ignore[arg-type]
        rpc_timeout=rpc_timeout,
    )


async def project_gpus(
    handle: Handle, project: str, *, rpc_timeout: timedelta | None = None
) -> int:
    """GPUs the project holds or waits for."""
    return await handle.query(
        P.FLEET_QUERY_PROJECT_GPUS, project, result_type=int, rpc_timeout=rpc_timeout
    )
