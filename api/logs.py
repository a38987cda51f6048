"""A notebook's container output, read from the host agent that runs it now."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from api.errors import ApiError
from api.fleet import FleetService
from api.service import NotebookService
from domain.config import Settings
from domain.tokens import agent_token


class LogService:
    def __init__(self, service: NotebookService, fleet: FleetService, settings: Settings) -> None:
        self._service = service
        self._fleet = fleet
        token = agent_token(settings.token_secret.get_secret_value())
        self._http = httpx.AsyncClient(
            headers={"authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(connect=5.0, read=None, write=10.0, pool=10.0),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def open(
        self, project: str, notebook_id: str, tail: int | None, follow: bool
    ) -> AsyncIterator[bytes]:
        """The output stream (its first bytes may take a while with follow); errors come
        before it starts, as API errors naming what is missing."""
        nb = await self._service.locate(project, notebook_id)
        host = nb.status.host
        if not nb.status.container or not host:
            raise ApiError(
                409,
                f"notebook {notebook_id} is {nb.status.state.value}: it has no container now, "
                "so there is no output to show",
            )
        hosts = {h.name: h for h in (await self._fleet.view()).hosts}
        view = hosts.get(host)
        if view is None or view.state != "up" or not view.inventory.logs_url:
            raise ApiError(503, f"host {host}, which runs notebook {notebook_id}, is not reachable")
        request = self._http.build_request(
            "GET",
            f"{view.inventory.logs_url}/logs/{notebook_id}",
            params={"tail": -1 if tail is None else tail, "follow": "1" if follow else "0"},
        )
        try:
            answer = await self._http.send(request, stream=True)
        except httpx.TransportError as err:
            raise ApiError(503, f"host {host} did not answer for the logs: {err!r}") from err
        if answer.status_code == 404:
            await answer.aclose()
            raise ApiError(409, f"notebook {notebook_id} has no container on host {host} now")
        if answer.status_code != 200:
            body = (await answer.aread()).decode(errors="replace")
            await answer.aclose()
            raise ApiError(502, f"host {host} refused the logs: {answer.status_code} {body}")
        return _chunks(answer)


async def _chunks(answer: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for chunk in answer.aiter_raw():
            yield chunk
    except httpx.TransportError:
        return  # the host went away mid-stream: what was read is what there is
    finally:
        await answer.aclose()
