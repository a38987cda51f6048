"""How requests reach the gateway: by their Host. A request for a notebook's origin goes to
its editor, whatever its path; everything else is the REST API's, which serves no editor
content and only redirects the old `/notebooks/{project}/{id}/…` paths to the origin."""

from __future__ import annotations

import asyncio
import contextlib
import html

import websockets
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.background import BackgroundTask
from starlette.datastructures import Headers
from starlette.responses import StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import connect as ws_connect

from api import tunnel
from api.gateway import HOP_BY_HOP, Gateway, Refused, downstream_cookie
from domain.gateway import GATEWAY_ROOT
from domain.ids import valid_notebook_id

router = APIRouter(tags=["gateway"], include_in_schema=False)
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
BUFFERED_BODY = 256 * 1024


@router.api_route(GATEWAY_ROOT + "/{project}/{notebook_id}", methods=_METHODS)
@router.api_route(GATEWAY_ROOT + "/{project}/{notebook_id}/{path:path}", methods=_METHODS)
async def legacy_path(request: Request, project: str, notebook_id: str, path: str = "") -> Response:
    """Links from before notebooks had their own origin: sent on there, path and query
    kept (JupyterLab served under the prefix; now at the origin's root)."""
    gw: Gateway = request.app.state.gateway
    if not valid_notebook_id(notebook_id):  # it becomes a host name: nothing else may
        return JSONResponse({"error": f"notebook {notebook_id} not found"}, status_code=404)
    query = f"?{request.url.query}" if request.url.query else ""
    return RedirectResponse(gw.origin(notebook_id) + "/" + path + query, status_code=307)


class NotebookOrigins:
    """ASGI middleware: a request whose Host is a notebook's origin never reaches the API."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            state = getattr(scope.get("app"), "state", None)
            gw: Gateway | None = getattr(state, "gateway", None)
            host = Headers(scope=scope).get("host", "")
            notebook_id = gw.notebook_for_host(host) if gw else None
            if gw is not None and notebook_id:
                if scope["type"] == "http":
                    response = await forward(gw, notebook_id, Request(scope, receive))
                    await response(scope, receive, send)
                else:
                    await forward_websocket(gw, notebook_id, WebSocket(scope, receive, send))
                return
        await self.app(scope, receive, send)


def _refusal(request_headers, err: Refused) -> Response:
    headers = {"retry-after": "5"} if err.retry else {}
    if "text/html" in request_headers.get("accept", ""):
        body = (
            "<!doctype html><html><head><title>ainb: notebook unavailable</title></head>"
            f"<body><h1>{err.status}</h1><p>{html.escape(err.message)}</p></body></html>"
        )
        return HTMLResponse(body, status_code=err.status, headers=headers)
    return JSONResponse({"error": err.message}, status_code=err.status, headers=headers)


def _unanswered(notebook_id: str, err: Exception) -> Refused:
    return Refused(502, f"the editor of notebook {notebook_id} did not answer: {err}", True)


def _path_and_query(conn: Request | WebSocket, authorized: bool) -> str:
    """The editor's path (still percent-encoded, so that an encoded slash in a file name
    stays one) and query, without the gateway's token once it has been accepted (an API
    token there would override the editor credentials the gateway adds)."""
    raw = conn.scope.get("raw_path")
    path = raw.decode("latin-1") if raw else conn.url.path
    query = conn.url.query
    if authorized and "token=" in query:
        query = "&".join(p for p in query.split("&") if not p.startswith("token="))
    return path + ("?" + query if query else "")


# --------------------------------------------------------------------------- HTTP


async def forward(gw: Gateway, notebook_id: str, request: Request) -> Response:
    has_body = "content-length" in request.headers or "transfer-encoding" in request.headers
    for attempt in (1, 2):
        try:
            route, access = await gw.admit(request, notebook_id)
        except Refused as err:
            return _refusal(request.headers, err)
        try:
            answer = await tunnel.exchange(
                gw.tunnels,
                notebook_id,
                request.method,
                _path_and_query(request, access.authorized),
                list(
                    gw.upstream_headers(
                        route, request.headers, access.authorized, read_only=access.read_only
                    ).items()
                ),
                request.stream() if has_body else None,
            )
            break
        except OSError as err:
            # The notebook may have stopped or moved since the route was cached: ask its
            # workflow again, once (a body already sent cannot be sent again).
            gw.forget(route)
            if attempt == 2 or has_body:
                return _refusal(request.headers, _unanswered(notebook_id, err))
    headers = [
        (k, downstream_cookie(v) if k == b"set-cookie" else v)
        for k, v in answer.headers
        if k.decode("latin-1") not in HOP_BY_HOP or k == b"content-length"
    ]
    length = next((int(v) for k, v in headers if k == b"content-length"), None)
    response: Response
    if length is not None and length <= BUFFERED_BODY:
        # Most answers (API calls, small assets) are small: read whole, they skip the
        # streaming response's per-request task group.
        body = b"".join([chunk async for chunk in answer.body()])
        response = Response(body, status_code=answer.status)
    else:
        response = StreamingResponse(
            answer.body(), status_code=answer.status, background=BackgroundTask(answer.close)
        )
    response.raw_headers = headers
    if access.session:
        secure = gw.origin(notebook_id).startswith("https:")
        gw.set_cookie(response, route, access.session, secure=secure)
    return response


# ---------------------------------------------------------------------- WebSocket


async def forward_websocket(gw: Gateway, notebook_id: str, websocket: WebSocket) -> None:
    try:
        route, access = await gw.admit(websocket, notebook_id)
    except Refused as err:
        if "websocket.http.response" in websocket.scope.get("extensions", {}):
            # The same answer as over HTTP (401, 403, 404...), not a bare 403 for all.
            await websocket.send_denial_response(_refusal(websocket.headers, err))
        else:
            await websocket.close(code=1008, reason=err.message[:120])
        return
    protocols = [
        p.strip()
        for p in websocket.headers.get("sec-websocket-protocol", "").split(",")
        if p.strip()
    ]
    headers = gw.upstream_headers(
        route, websocket.headers, access.authorized, websocket=True, read_only=access.read_only
    )
    host = websocket.headers.get("host", "localhost")
    origin = websocket.headers.get("origin")
    try:
        sock = await tunnel.open_socket(gw.targets, gw.tunnel_token, notebook_id)
        editor = await ws_connect(
            f"ws://{host}{_path_and_query(websocket, access.authorized)}",
            sock=sock,
            additional_headers=headers,
            origin=origin,  # type: ignore[arg-type]
            subprotocols=protocols or None,  # type: ignore[arg-type]
            max_size=None,
            open_timeout=10,
            ping_interval=None,  # the two ends keep their own session alive
            compression=None,
        )
    except (OSError, websockets.exceptions.WebSocketException, TimeoutError) as err:
        gw.forget(route)
        await websocket.close(code=1011, reason=f"the editor refused: {err}"[:120])
        return
    await websocket.accept(subprotocol=editor.subprotocol)
    await _relay(websocket, editor)


async def _relay(client: WebSocket, editor) -> None:
    async def client_to_editor() -> None:
        while True:
            message = await client.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            await editor.send(data if data is not None else message.get("text", ""))

    async def editor_to_client() -> None:
        async for data in editor:
            if isinstance(data, bytes):
                await client.send_bytes(data)
            else:
                await client.send_text(data)

    tasks = [asyncio.create_task(client_to_editor()), asyncio.create_task(editor_to_client())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(
                asyncio.CancelledError, WebSocketDisconnect, websockets.exceptions.ConnectionClosed
            ):
                await task
        await editor.close()
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await client.close()
