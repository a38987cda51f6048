"""Drive notebooks from Python through the Temporal client.

The REST API runs on exactly these services (``api/main.py`` builds them with
:func:`services`), so a script gets the same validation, 409s and answers as the API
and the ``ainb`` CLI, without an HTTP hop::

    import asyncio
    from api.client import Ainb

    async def main() -> None:
        ainb = await Ainb.connect(project="demo")  # settings as for ainb-api
        nb = await ainb.create({"name": "exp1", "framework": {"id": "pytorch"},
                                "editor": "jupyterlab",
                                "resources": {"flavor": "ai1-1-cpu", "cpu": 2}})
        nb = await ainb.wait(nb.id, "RUNNING")
        print(nb.status.url)
        await ainb.stop(nb.id)

    asyncio.run(main())

Refusals raise :class:`api.errors.ApiError` (``status`` 404/409/422 and ``field``); a spec
given as a dict that does not validate raises pydantic's ``ValidationError``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from temporalio.client import Client

from api.errors import ApiError
from api.fleet import FleetService
from api.service import NotebookService
from api.usage import NotebookUsage, UsageService
from domain.access import Principal, Role
from domain.config import Settings
from domain.messages import LabelsRequest
from domain.spec import NotebookSpec
from domain.states import NotebookState
from domain.status import Notebook
from ledger.usage import UsageLedger
from temporal_client.connect import connect

__all__ = ["Ainb", "ApiError", "Services", "services"]


@dataclass(frozen=True)
class Services:
    client: Client
    settings: Settings
    fleet: FleetService
    notebooks: NotebookService
    usage: UsageService


def services(client: Client, settings: Settings) -> Services:
    fleet = FleetService(client, settings)
    notebooks = NotebookService(client, settings, fleet)
    usage = UsageService(notebooks, UsageLedger(settings.ledger))
    return Services(client, settings, fleet, notebooks, usage)


# Whoever holds Temporal's address and the settings may do anything (as the operator's
# configuration may): the audit names them as this, not as an API token.
DIRECT = Principal(
    token_id="temporal-client", name="Python client (direct Temporal access)", role=Role.ADMIN
)


class Ainb:
    """Typed calls for one project's notebooks."""

    def __init__(self, svc: Services, project: str) -> None:
        self._svc = svc
        self.project = project

    @classmethod
    async def connect(cls, project: str, settings: Settings | None = None) -> Ainb:
        settings = settings or Settings.load()
        return cls(services(await connect(settings), settings), project)

    async def create(self, spec: NotebookSpec | dict[str, Any]) -> Notebook:
        if not isinstance(spec, NotebookSpec):
            spec = NotebookSpec.model_validate(spec)
        return await self._svc.notebooks.create(self.project, spec, DIRECT)

    async def get(self, notebook_id: str) -> Notebook:
        # A copy: the one served is the status cache's, shared with every other reader.
        nb = await self._svc.notebooks.get(self.project, notebook_id)
        return nb.model_copy(deep=True)

    async def list(
        self, state: NotebookState | str | None = None, labels: dict[str, str] | None = None
    ) -> list[Notebook]:
        state = NotebookState(state) if state is not None else None
        return await self._svc.notebooks.list(self.project, state, labels)

    async def start(self, notebook_id: str) -> Notebook:
        return await self._svc.notebooks.start(self.project, notebook_id, DIRECT)

    async def stop(self, notebook_id: str) -> Notebook:
        return await self._svc.notebooks.stop(self.project, notebook_id, DIRECT)

    async def delete(self, notebook_id: str, keep_workspace: bool = False) -> Notebook:
        return await self._svc.notebooks.delete(self.project, notebook_id, keep_workspace, DIRECT)

    async def set_labels(self, notebook_id: str, labels: dict[str, str]) -> Notebook:
        req = LabelsRequest(labels=labels)
        return await self._svc.notebooks.set_labels(self.project, notebook_id, req, DIRECT)

    async def usage(self, notebook_id: str) -> NotebookUsage:
        return await self._svc.usage.notebook(self.project, notebook_id)

    async def wait(
        self, notebook_id: str, *states: NotebookState | str, within_s: float = 300
    ) -> Notebook:
        """Until the notebook is in one of ``states``; TimeoutError after ``within_s``.
        It waits on the notebook's changes (a long poll), not on a clock."""
        wanted = {NotebookState(s) for s in states}
        deadline = time.monotonic() + within_s
        nb = await self.get(notebook_id)
        while nb.status.state not in wanted:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{notebook_id} is {nb.status.state}, not {sorted(wanted)}")
            nb = await self._svc.notebooks.wait_for_change(
                self.project, notebook_id, nb.status.version, min(left, 25.0)
            )
        return nb.model_copy(deep=True)

    async def aclose(self) -> None:
        """Stop following notebooks (the status cache's watchers)."""
        await self._svc.notebooks.aclose()
