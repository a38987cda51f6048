"""The one request a UI repeats all day, `GET /v1/projects/{project}/notebooks/{id}`,
answered without FastAPI's routing, dependency solving and response validation: those cost
several times what the read itself does (a status-cache hit). Only the plain, successful
case is served here, with the same checks in the same order (the token, the caller's right
to read in the project, the notebook within its reach) and the very bytes FastAPI would
send; anything else (a query string, no or a bad token, a refusal, a 404, an error) goes
on to the FastAPI route, which answers it as always (and audits a refusal)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import TypeAdapter
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from domain.access import Action, refusal
from domain.ids import valid_notebook_id
from domain.status import Notebook

# The route's own path parameters: a project as api/deps.Project accepts it.
_PATH = re.compile(r"^/v1/projects/([a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?)/notebooks/([^/]+)$")
_BEARER = re.compile(r"^[Bb][Ee][Aa][Rr][Ee][Rr] +(.+)$")
# What FastAPI serializes a response_model with (fastapi/_compat: serialize_json).
_NOTEBOOK = TypeAdapter(Notebook)


class FastReads:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "GET"
            and not scope.get("query_string")
            and (m := _PATH.match(scope["path"]))
            and valid_notebook_id(m.group(2))
        ):
            body = await _read(scope, m.group(1), m.group(2))
            if body is not None:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [
                            (b"content-length", str(len(body)).encode()),
                            (b"content-type", b"application/json"),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


async def _read(scope: Scope, project: str, notebook_id: str) -> bytes | None:
    """The notebook's JSON when everything goes right; None sends the request on."""
    state: Any = scope["app"].state
    auth, service = getattr(state, "auth", None), getattr(state, "service", None)
    if auth is None or service is None:
        return None
    given = _BEARER.match(Headers(scope=scope).get("authorization", "").strip())
    if given is None:
        return None
    try:
        principal = await auth.principal(given.group(1).strip())
        if principal is None or refusal(principal, Action.GET, project):
            return None
        notebook = await service.get(project, notebook_id, principal)
    except Exception:
        return None  # the route gives the error its usual answer
    return _NOTEBOOK.dump_json(notebook, by_alias=True)
