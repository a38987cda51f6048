"""What the operator's catalog offers: frameworks with their versions, and editors.

Read from the settings alone (no Temporal call), so a client can list what to ask for
even while the control plane is busy. Flavors, which need the fleet's free capacity,
are in api/routers/fleet.py.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from api.auth import allow
from api.deps import get_settings
from api.errors import ERROR_RESPONSES
from domain.access import Action
from domain.config import Settings

router = APIRouter(
    prefix="/v1/capabilities",
    tags=["capabilities"],
    dependencies=[Depends(allow(Action.CAPABILITIES))],
    responses=ERROR_RESPONSES,
)

Config = Annotated[Settings, Depends(get_settings)]


class FrameworkVersionView(BaseModel):
    version: str
    default: bool
    editors: list[str]
    # editor -> image: the one internal name worth showing (what `docker pull` would need)
    images: dict[str, str]


class FrameworkView(BaseModel):
    id: str
    description: str
    default_version: str
    versions: list[FrameworkVersionView]


class EditorView(BaseModel):
    id: str
    # "framework:version" pairs that offer this editor
    frameworks: list[str]


@router.get("/frameworks", response_model=list[FrameworkView])
async def list_frameworks(settings: Config) -> list[FrameworkView]:
    """Each framework with its versions, the default one, and the editors each version offers."""
    return [
        FrameworkView(
            id=name,
            description=entry.description,
            default_version=entry.default_version,
            versions=[
                FrameworkVersionView(
                    version=version,
                    default=version == entry.default_version,
                    editors=sorted(v.images),
                    images=dict(sorted(v.images.items())),
                )
                for version, v in sorted(entry.versions.items())
            ],
        )
        for name, entry in sorted(settings.frameworks.items())
    ]


@router.get("/editors", response_model=list[EditorView])
async def list_editors(settings: Config) -> list[EditorView]:
    """The editors some framework version of the catalog offers, with those versions."""
    offered: dict[str, list[str]] = {}
    for name, entry in sorted(settings.frameworks.items()):
        for version, v in sorted(entry.versions.items()):
            for editor in v.images:
                offered.setdefault(editor, []).append(f"{name}:{version}")
    return [EditorView(id=editor, frameworks=fws) for editor, fws in sorted(offered.items())]
