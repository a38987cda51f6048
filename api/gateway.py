"""The gateway: one stable address per notebook, `/notebooks/{project}/{id}/…`, forwarded
(HTTP and WebSocket) to wherever the notebook's editor answers now.

Access: the notebook's token or an API token of its project (`?token=`, `Authorization:
token|Bearer …`, or the cookie the gateway sets after either), unless the notebook is
`unsecure_http`. An authenticated request reaches the editor already signed in: the gateway
adds the editor's own credentials, so one token link opens JupyterLab or VS Code. A request
without credentials passes through unchanged and meets the editor's own login, which still
wants the same token; a wrong explicit token is refused here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import html
import time
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from urllib.parse import urlsplit

import httpx
import websockets
from argon2 import PasswordHasher
from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse
from starlette.websockets import WebSocketDisconnect
from websockets.asyncio.client import connect as ws_connect

from api.errors import ApiError
from api.service import NotebookService
from domain.config import Settings
from domain.gateway import GATEWAY_ROOT, gateway_prefix, keeps_prefix
from domain.spec import Editor
from domain.states import NotebookState

router = APIRouter(tags=["gateway"], include_in_schema=False)

# Where a notebook runs changes only at a start; a short cache spares a Temporal query per
# asset while a stale entry costs at most this long (a refused connection drops it at once).
ROUTE_TTL_S = 2.0
COOKIE_PREFIX = "ainb-gw-"
CODE_SERVER_COOKIE = "code-server-session"
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}
# The editor's session cookie for code-server is an argon2 hash of its password, checked on
# every request: cheap parameters keep that check fast, and the hash never leaves the
# gateway-to-editor hop.
_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@dataclass(frozen=True)
class Route:
    project: str
    notebook_id: str
    editor: Editor
    unsecure_http: bool
    state: NotebookState
    upstream: str | None  # scheme://host:port of the editor, while it serves

    @property
    def prefix(self) -> str:
        return gateway_prefix(self.project, self.notebook_id)

    def upstream_path(self, raw_path: str) -> str:
        """The editor's path for the gateway's (still percent-encoded, so that an encoded
        slash in a file name stays one)."""
        rest = raw_path[len(self.prefix) :] if raw_path.startswith(self.prefix) else ""
        return (self.prefix if keeps_prefix(self.editor) else "/") + rest


class Refused(Exception):
    def __init__(self, status: int, message: str, retry: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry = retry


class Gateway:
    def __init__(self, service: NotebookService, settings: Settings) -> None:
        self._service = service
        self._settings = settings
        self._routes: dict[tuple[str, str], tuple[float, Route]] = {}
        self._session_cookies: dict[str, str] = {}
        self.http = httpx.AsyncClient(
            # One client serves every user: it must never keep a cookie an editor sets for
            # one of them (it would sign the next stranger in).
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
            timeout=httpx.Timeout(connect=5.0, read=None, write=60.0, pool=10.0),
            follow_redirects=False,
            limits=httpx.Limits(max_connections=500, max_keepalive_connections=100),
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    # ------------------------------------------------------------------ routing

    async def route(self, project: str, notebook_id: str) -> Route:
        key = (project, notebook_id)
        cached = self._routes.get(key)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        try:
            nb = await self._service.locate(project, notebook_id)
        except ApiError as err:
            raise Refused(err.status, err.message) from None
        upstream = None
        if nb.status.endpoint:
            parts = urlsplit(nb.status.endpoint)
            upstream = f"{parts.scheme}://{parts.netloc}"
        route = Route(
            project, notebook_id, nb.spec.editor, nb.spec.unsecure_http, nb.status.state, upstream
        )
        now = time.monotonic()
        if len(self._routes) > 10_000:
            self._routes = {k: v for k, v in self._routes.items() if v[0] > now}
        self._routes[key] = (now + ROUTE_TTL_S, route)
        return route

    def forget(self, route: Route) -> None:
        self._routes.pop((route.project, route.notebook_id), None)

    @staticmethod
    def serving(route: Route) -> str:
        if route.state != NotebookState.RUNNING or route.upstream is None:
            state = route.state.value
            raise Refused(
                503,
                f"notebook {route.notebook_id} is {state}, not RUNNING: "
                + ("its editor is on the way" if state == "STARTING" else "start it first"),
                retry=state == "STARTING",
            )
        return route.upstream

    # ------------------------------------------------------------------- access

    def _valid(self, route: Route, token: str) -> bool:
        if hmac.compare_digest(token, self._service.editor_token(route.notebook_id)):
            return True
        return any(
            hmac.compare_digest(token, t.get_secret_value())
            for t in self._settings.api_tokens.get(route.project, [])
        )

    async def admit(
        self, conn: Request | WebSocket, project: str, notebook_id: str
    ) -> tuple[Route, str, bool, bool]:
        """(route, editor origin, authorized, set the cookie) for a request or WebSocket to
        a notebook, or Refused: who may come in, and whether the editor serves now."""
        route = await self.route(project, notebook_id)
        authorized, remember = self.authorize(route, conn.query_params, conn.headers, conn.cookies)
        return route, self.serving(route), authorized, remember

    def authorize(self, route: Route, query, headers, cookies) -> tuple[bool, bool]:
        """(authorized, set the cookie): explicit tokens must be valid; a stale cookie is
        ignored; none at all passes through to the editor's own login. An unsecure_http
        notebook needs none: nothing is checked or added."""
        if route.unsecure_http:
            return False, False
        explicit = query.get("token")
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if explicit is None and scheme.lower() in ("token", "bearer") and value:
            explicit = value.strip()
        if explicit is not None:
            if not self._valid(route, explicit):
                raise Refused(401, f"the token is not valid for notebook {route.notebook_id}")
            return True, True
        cookie = cookies.get(COOKIE_PREFIX + route.notebook_id)
        return bool(cookie and self._valid(route, cookie)), False

    def editor_credentials(self, route: Route) -> tuple[dict[str, str], dict[str, str]]:
        """Headers and cookies that sign a request in to the editor itself (only for a
        request authorize() let in, so never for an unsecure_http notebook)."""
        token = self._service.editor_token(route.notebook_id)
        if route.editor is Editor.VSCODE:
            hashed = self._session_cookies.get(route.notebook_id)
            if hashed is None:
                hashed = _HASHER.hash(token)
                self._session_cookies[route.notebook_id] = hashed
            return {}, {CODE_SERVER_COOKIE: hashed}
        return {"authorization": f"token {token}"}, {}

    def set_cookie(self, response: Response, route: Route, secure: bool) -> None:
        # Strict: a page on another site can never make the browser send it, so the
        # credentials the gateway adds cannot be borrowed by a cross-site request.
        response.set_cookie(
            COOKIE_PREFIX + route.notebook_id,
            self._service.editor_token(route.notebook_id),
            path=route.prefix,
            httponly=True,
            samesite="strict",
            secure=secure,
        )

    # ------------------------------------------------------------------ headers

    def public_origins(self, headers) -> set[str]:
        origins = {_origin(self._settings.public_url)}
        if host := headers.get("host"):
            origins |= {f"http://{host}", f"https://{host}"}
        return origins

    def upstream_headers(
        self, route: Route, upstream: str, headers, authorized: bool, *, websocket: bool = False
    ) -> dict[str, str]:
        out: dict[str, str] = {}
        own = self.public_origins(headers)
        for name, value in headers.items():
            lname = name.lower()
            if (lname in HOP_BY_HOP and lname != "content-length") or lname == "cookie":
                continue
            if websocket and (lname.startswith("sec-websocket-") or lname == "origin"):
                continue
            if lname == "authorization" and authorized:
                continue  # an API token is the gateway's business, not the editor's
            if lname in ("origin", "referer"):
                # The editor checks that a request comes from its own origin.
                for origin in own:
                    if value == origin or value.startswith(origin + "/"):
                        value = upstream + value[len(origin) :]
                        if lname == "referer" and not keeps_prefix(route.editor):
                            value = value.replace(route.prefix, "/", 1)
                        break
            out[lname] = value
        cookies = _cookie_pairs(headers.get("cookie", ""))
        cookies.pop(COOKIE_PREFIX + route.notebook_id, None)
        if authorized:
            extra_headers, extra_cookies = self.editor_credentials(route)
            out.update(extra_headers)
            cookies.update(extra_cookies)
        if cookies:
            out["cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        out["x-forwarded-proto"] = headers.get("x-forwarded-proto", "http")
        return out

    def downstream_location(self, route: Route, upstream: str, location: str) -> str:
        if location.startswith(upstream):
            location = location[len(upstream) :] or "/"
        if location.startswith("/") and not keeps_prefix(route.editor):
            location = route.prefix.rstrip("/") + location
        return location


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _cookie_pairs(header: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name:
            pairs[name] = value
    return pairs


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
    return Refused(502, f"the editor of notebook {notebook_id} did not answer: {err!r}", True)


def _raw_path(conn: Request | WebSocket) -> str:
    raw = conn.scope.get("raw_path")
    return raw.decode("latin-1") if raw else conn.url.path


def _query(conn: Request | WebSocket, authorized: bool) -> str:
    """The query for the editor: without the gateway's token once it has been accepted
    (an API token there would override the editor credentials the gateway adds)."""
    query = conn.url.query
    if authorized and "token=" in query:
        query = "&".join(p for p in query.split("&") if not p.startswith("token="))
    return "?" + query if query else ""


def _gateway(conn: Request | WebSocket) -> Gateway:
    return conn.app.state.gateway


# --------------------------------------------------------------------------- HTTP

_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@router.api_route(GATEWAY_ROOT + "/{project}/{notebook_id}", methods=_METHODS)
async def to_prefix(request: Request, project: str, notebook_id: str) -> Response:
    query = f"?{request.url.query}" if request.url.query else ""
    return RedirectResponse(gateway_prefix(project, notebook_id) + query, status_code=307)


@router.api_route(GATEWAY_ROOT + "/{project}/{notebook_id}/{path:path}", methods=_METHODS)
async def forward(request: Request, project: str, notebook_id: str, path: str) -> Response:
    gw = _gateway(request)
    has_body = "content-length" in request.headers or "transfer-encoding" in request.headers
    for attempt in (1, 2):
        try:
            route, upstream, authorized, remember = await gw.admit(request, project, notebook_id)
        except Refused as err:
            return _refusal(request.headers, err)
        url = upstream + route.upstream_path(_raw_path(request)) + _query(request, authorized)
        outbound = gw.http.build_request(
            request.method,
            url,
            headers=gw.upstream_headers(route, upstream, request.headers, authorized),
            content=request.stream() if has_body else None,
        )
        try:
            answer = await gw.http.send(outbound, stream=True)
            break
        except httpx.ConnectError as err:
            # Nothing was sent: the notebook may have stopped or moved since the route was
            # cached. Ask its workflow again, once.
            gw.forget(route)
            if attempt == 2:
                return _refusal(request.headers, _unanswered(notebook_id, err))
        except httpx.TransportError as err:
            gw.forget(route)
            return _refusal(request.headers, _unanswered(notebook_id, err))
    headers = [
        (k, gw.downstream_location(route, upstream, v) if k.lower() == "location" else v)
        for k, v in answer.headers.multi_items()
        if k.lower() not in HOP_BY_HOP or k.lower() == "content-length"
    ]
    response = StreamingResponse(
        answer.aiter_raw(), status_code=answer.status_code, background=BackgroundTask(answer.aclose)
    )
    response.raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    if remember:
        gw.set_cookie(response, route, secure=request.url.scheme == "https")
    return response


# ---------------------------------------------------------------------- WebSocket


@router.websocket(GATEWAY_ROOT + "/{project}/{notebook_id}/{path:path}")
async def forward_websocket(websocket: WebSocket, project: str, notebook_id: str, path: str):
    gw = _gateway(websocket)
    origin = websocket.headers.get("origin")
    if origin is not None and origin not in gw.public_origins(websocket.headers):
        # A page of another site must not use the browser's cookie to reach the editor.
        await websocket.close(code=1008, reason="cross-origin WebSocket refused")
        return
    try:
        route, upstream, authorized, _ = await gw.admit(websocket, project, notebook_id)
    except Refused as err:
        await websocket.close(code=1008, reason=err.message[:120])
        return

    url = "ws" + upstream.removeprefix("http") + route.upstream_path(_raw_path(websocket))
    url += _query(websocket, authorized)
    protocols = [
        p.strip()
        for p in websocket.headers.get("sec-websocket-protocol", "").split(",")
        if p.strip()
    ]
    headers = gw.upstream_headers(route, upstream, websocket.headers, authorized, websocket=True)
    try:
        editor = await ws_connect(
            url,
            additional_headers=headers,
            origin=upstream if origin is not None else None,
            subprotocols=protocols or None,
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
