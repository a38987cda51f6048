"""Control-plane activities that talk to the fleet workflow for a notebook.

A workflow cannot send an Update to another workflow, so a notebook's request for
capacity (and its release) goes through these; both are idempotent in the fleet.
"""

from __future__ import annotations

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from domain import activity_names as A
from domain.fleet import CapacityRequest, Decision
from temporal_client import fleet_calls


class FleetActivities:
    def __init__(self, client: Client) -> None:
        self._client = client

    def activities(self) -> list:
        return [self.request_capacity, self.release_capacity, self.find_gone_notebooks]

    @activity.defn(name=A.REQUEST_CAPACITY)
    async def request_capacity(self, req: CapacityRequest) -> Decision:
        return await fleet_calls.request(fleet_calls.fleet(self._client), req)

    @activity.defn(name=A.FIND_GONE_NOTEBOOKS)
    async def find_gone_notebooks(self, notebooks: list[str]) -> list[str]:
        """Those whose workflow no longer runs (terminated by an operator, say): what they
        hold would otherwise never come back."""
        gone = []
        for workflow_id in notebooks:
            try:
                desc = await self._client.get_workflow_handle(workflow_id).describe()
            except RPCError as err:
                if err.status == RPCStatusCode.NOT_FOUND:
                    gone.append(workflow_id)
                continue
            if desc.status != WorkflowExecutionStatus.RUNNING:
                gone.append(workflow_id)
        return gone

    @activity.defn(name=A.RELEASE_CAPACITY)
    async def release_capacity(self, notebook: str) -> bool:
        return await fleet_calls.release(fleet_calls.fleet(self._client), notebook)
