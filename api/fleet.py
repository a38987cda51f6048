"""What the fleet knows, for the API: hosts, free capacity, queue positions, quotas."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel
from temporalio.client import Client
from temporalio.service import RPCError

from api.errors import ApiError
from domain.config import Settings
from domain.fleet import Decision
from domain.messages import FleetView
from temporal_client import fleet_calls

QUERY_TIMEOUT = timedelta(seconds=5)


class FlavorView(BaseModel):
    name: str
    kind: str
    description: str
    cpu_per_unit: float
    memory_gib_per_unit: float
    gpu_model: str | None
    max_units: int
    # units one notebook could get right now (on the emptiest fitting host), and queued
    free_units: int
    queued: int


class FleetService:
    def __init__(self, client: Client, settings: Settings) -> None:
        self._fleet = fleet_calls.fleet(client)
        self._settings = settings

    async def view(self) -> FleetView:
        try:
            return await fleet_calls.view(self._fleet, rpc_timeout=QUERY_TIMEOUT)
        except RPCError as err:
            raise ApiError(503, f"the fleet did not answer ({err.message}); try again") from err

    async def flavors(self) -> list[FlavorView]:
        usage = (await self.view()).flavors
        return [
            FlavorView(
                name=name,
                kind=f.kind,
                description=f.description,
                cpu_per_unit=f.cpu_per_unit,
                memory_gib_per_unit=f.memory_gib_per_unit,
                gpu_model=f.gpu_model,
                max_units=f.max_units,
                free_units=min(usage.get(name, {}).get("free_units_largest_host", 0), f.max_units),
                queued=usage.get(name, {}).get("queued", 0),
            )
            for name, f in sorted(self._settings.flavors.items())
        ]

    async def position(self, workflow_id: str) -> Decision | None:
        try:
            return await fleet_calls.position(self._fleet, workflow_id, rpc_timeout=QUERY_TIMEOUT)
        except RPCError:
            return None

    async def check_project_quota(self, project: str, gpus: int) -> None:
        """409 when starting this would take the project over its GPU quota. The fleet
        enforces it again at grant time (two starts racing here)."""
        if not gpus:
            return
        limit = self._settings.project_max_gpus
        try:
            used = await fleet_calls.project_gpus(self._fleet, project, rpc_timeout=QUERY_TIMEOUT)
        except RPCError:
            return  # the fleet decides at grant time
        if used + gpus > limit:
            raise ApiError(
                409,
                f"project quota: at most {limit} GPUs at once per project "
                f"(project_max_gpus); project {project} holds or waits for {used}, "
                f"this notebook asks {gpus}",
            )
