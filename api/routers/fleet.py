"""The fleet, for operators and for people choosing a flavor."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from api.auth import allow
from api.errors import ERROR_RESPONSES
from api.fleet import FlavorView, FleetService
from domain.access import Action
from domain.messages import FleetView

router = APIRouter(tags=["fleet"], responses=ERROR_RESPONSES)


async def get_fleet(request: Request) -> FleetService:
    return request.app.state.fleet


Fleet = Annotated[FleetService, Depends(get_fleet)]


@router.get("/v1/hosts", response_model=FleetView, dependencies=[Depends(allow(Action.HOSTS))])
async def list_hosts(fleet: Fleet) -> FleetView:
    """Every host: up or down, its inventory, what is free and who holds the rest; and
    the queue of notebooks waiting for capacity (administrator tokens only: it names every
    project's notebooks)."""
    return await fleet.view()


@router.get(
    "/v1/capabilities/flavors",
    response_model=list[FlavorView],
    dependencies=[Depends(allow(Action.CAPABILITIES))],
)
async def list_flavors(fleet: Fleet) -> list[FlavorView]:
    """The flavors offered, with how many units one notebook could get right now."""
    return await fleet.flavors()
