"""The gateway: each notebook at its own origin (`http://{id}.localhost:8000`), forwarded
(HTTP and WebSocket) through the tunnel of the host agent that runs its editor now.

Access: the notebook's link token (status.url; bound to its project, id and token
generation), or an API token that may open the project's editors (role operator or
administrator, its label selector matching the notebook) — as `?token=`, `Authorization:
token|Bearer …`, or the host-only cookie the gateway sets after either, which names who
opened the session and is checked again on every request (a rotation or a revoked token
ends it) — unless the notebook is `unsecure_http`. An authenticated request reaches the
editor already signed in: the gateway adds the editor's own credentials, which never
leave the platform, so one link opens JupyterLab or VS Code. Anything else is refused
here (401), never passed to the editor's login.

Isolation: one origin per notebook keeps pages of notebook A from reading notebook B or
the REST API with the visitor's cookies; requests another origin's page makes here
(other than following a link) are refused, and so are cookies an editor tries to scope
wider than its own origin.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass

from argon2 import PasswordHasher
from fastapi.responses import Response
from temporalio.client import Client

from api import tunnel
from api.auth import Authenticator
from api.errors import ApiError
from api.fleet import FleetService
from api.service import NotebookService
from domain import search_attributes as sa
from domain.access import Action, Principal, Role, reaches, refusal
from domain.config import Settings
from domain.gateway import host_matcher, notebook_origin
from domain.ids import valid_notebook_id
from domain.protocol import NOTEBOOK_WORKFLOW_TYPE
from domain.spec import Editor
from domain.states import NotebookState
from domain.tokens import editor_read_token, link_token, session_mac, tunnel_token

# Where a notebook runs changes only at a start; a short cache spares a Temporal query per
# asset while a stale entry costs at most this long (a refused tunnel drops it at once).
ROUTE_TTL_S = 2.0
# A notebook id nobody knows is asked about again only after this long.
UNKNOWN_TTL_S = 5.0
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
    # host:port of the tunnel of the agent running the editor, while it serves.
    tunnel: str | None
    labels: dict[str, str]
    token_generation: int


@dataclass(frozen=True)
class Access:
    """Who is let in to a notebook: signed in to the editor or not (unsecure_http),
    read-only (a read token, JupyterLab), and the session cookie to set."""

    authorized: bool
    read_only: bool = False
    session: str | None = None


class Refused(Exception):
    def __init__(self, status: int, message: str, retry: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry = retry


class Gateway:
    def __init__(
        self,
        service: NotebookService,
        settings: Settings,
        fleet: FleetService | None = None,
        client: Client | None = None,
        auth: Authenticator | None = None,
    ) -> None:
        self._service = service
        self._auth = auth
        self._secret = settings.token_secret.get_secret_value()
        self._fleet = fleet
        self._client = client
        self._settings = settings
        self.pattern = settings.notebook_origin_pattern
        self._host = host_matcher(self.pattern)
        self._projects: dict[str, str] = {}  # notebook id -> project: never changes
        self._unknown: dict[str, float] = {}
        self._routes: dict[str, tuple[float, Route]] = {}
        # (expiry, host name -> host:port of its agent's tunnel), from the fleet's view.
        self._agents: tuple[float, dict[str, str]] = (0.0, {})
        self._session_cookies: dict[str, str] = {}
        self.targets = tunnel.Targets()
        self.tunnel_token = tunnel_token(settings.token_secret.get_secret_value())
        # Keeps no cookie and follows no redirect: every answer goes back as it came.
        self.tunnels = tunnel.Tunnels(self.targets, self.tunnel_token)

    async def aclose(self) -> None:
        self.tunnels.close()

    # ------------------------------------------------------------------ routing

    def notebook_for_host(self, host: str) -> str | None:
        """The notebook whose origin a Host header names, if it names one."""
        match = self._host.match(host)
        return match.group(1).lower() if match else None

    def origin(self, notebook_id: str) -> str:
        return notebook_origin(self.pattern, notebook_id)

    async def project_of(self, notebook_id: str) -> str:
        if project := self._projects.get(notebook_id):
            return project
        not_found = Refused(404, f"notebook {notebook_id} not found")
        if not valid_notebook_id(notebook_id) or self._client is None:
            raise not_found
        if self._unknown.get(notebook_id, 0.0) > time.monotonic():
            raise not_found
        query = f'WorkflowType = "{NOTEBOOK_WORKFLOW_TYPE}" AND {sa.ID.name} = "{notebook_id}"'
        async for wf in self._client.list_workflows(query, limit=1):
            _, project, _ = wf.id.split("/", 2)
            self._projects[notebook_id] = project
            return project
        if len(self._unknown) > 10_000:
            self._unknown.clear()
        self._unknown[notebook_id] = time.monotonic() + UNKNOWN_TTL_S
        raise not_found

    async def route(self, notebook_id: str) -> Route:
        cached = self._routes.get(notebook_id)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        project = await self.project_of(notebook_id)
        try:
            nb = await self._service.locate(project, notebook_id)
        except ApiError as err:
            raise Refused(err.status, err.message) from None
        address = None
        # Editors of containers started before the tunnel existed (a TCP endpoint, host
        # networking) are not served: a restart gives them their own namespace.
        if (nb.status.endpoint or "").startswith("unix:") and nb.status.host:
            address = (await self._tunnel_addresses()).get(nb.status.host)
        route = Route(
            project,
            notebook_id,
            nb.spec.editor,
            nb.spec.unsecure_http,
            nb.status.state,
            address,
            dict(nb.spec.labels),
            nb.status.token_generation,
        )
        now = time.monotonic()
        if len(self._routes) > 10_000:
            self._routes = {k: v for k, v in self._routes.items() if v[0] > now}
        self._routes[notebook_id] = (now + ROUTE_TTL_S, route)
        if address:
            self.targets.set(notebook_id, address)
        return route

    async def _tunnel_addresses(self) -> dict[str, str]:
        expires, addresses = self._agents
        if expires > time.monotonic() or self._fleet is None:
            return addresses
        try:
            view = await self._fleet.view()
        except ApiError as err:
            raise Refused(503, err.message, retry=True) from None
        addresses = {
            h.name: h.inventory.editor_tunnel
            for h in view.hosts
            if h.state == "up" and h.inventory.editor_tunnel
        }
        self._agents = (time.monotonic() + ROUTE_TTL_S, addresses)
        return addresses

    def invalidate(self, notebook_id: str) -> None:
        """The notebook changed in a way that matters here (a token rotation): ask again."""
        self._routes.pop(notebook_id, None)

    def forget(self, route: Route) -> None:
        self._routes.pop(route.notebook_id, None)
        self._agents = (0.0, self._agents[1])
        self.tunnels.drop(route.notebook_id)

    @staticmethod
    def serving(route: Route) -> None:
        if route.state != NotebookState.RUNNING or route.tunnel is None:
            state = route.state.value
            if state == "RUNNING":
                message = "its host does not answer, or it runs since before an upgrade: "
                message += "stop and start it"
            elif state == "STARTING":
                message = "its editor is on the way"
            else:
                message = "start it first"
            raise Refused(
                503,
                f"notebook {route.notebook_id} is {state}, not serving: {message}",
                retry=state == "STARTING",
            )

    # ------------------------------------------------------------------- access

    def _link(self, route: Route) -> str:
        return link_token(self._secret, route.project, route.notebook_id, route.token_generation)

    async def _who(self, route: Route, token: str) -> tuple[str, bool] | None:
        """(who, read-only) a token is on this notebook: "link" for its link token, an API
        token's id for a token that may open it, None for no valid token; Refused (403)
        for a valid token that may not."""
        # Bytes: a token that is not ASCII is just a wrong one, never an error.
        given = token.encode("utf-8", "surrogateescape")
        if hmac.compare_digest(given, self._link(route).encode()):
            return "link", False
        principal = await self._auth.principal(token) if self._auth else None
        if principal is None:
            return None
        return principal.token_id, self._may_open(route, principal)

    def _editors_own(self, route: Route, token: str) -> bool:
        given = token.encode("utf-8", "surrogateescape")
        own = self._service.editor_token(route.notebook_id).encode()
        reader = editor_read_token(self._secret, route.notebook_id).encode()
        return hmac.compare_digest(given, own) | hmac.compare_digest(given, reader)

    def _may_open(self, route: Route, principal: Principal) -> bool:
        """Whether the principal opens the editor read-only; Refused if not at all."""
        if why := refusal(principal, Action.OPEN_EDITOR, route.project):
            raise Refused(403, f"notebook {route.notebook_id}: {why}")
        if not reaches(principal.selector, route.labels):
            raise Refused(404, f"notebook {route.notebook_id} not found")
        if principal.role is not Role.READ:
            return False
        if route.editor is not Editor.JUPYTERLAB:
            raise Refused(
                403,
                f"notebook {route.notebook_id}: a read token opens only JupyterLab (read-only); "
                "VS Code has no read-only mode: use an operator token or the notebook's link",
            )
        return True

    def _session(self, route: Route, who: str) -> str:
        mac = session_mac(
            self._secret, route.project, route.notebook_id, route.token_generation, who
        )
        return f"{who}.{mac}"

    async def _session_valid(self, route: Route, cookie: str) -> bool | None:
        """None for no valid session; else whether it is read-only."""
        who, _, _ = cookie.partition(".")
        expected = self._session(route, who).encode()
        if not who or not hmac.compare_digest(cookie.encode("utf-8", "surrogateescape"), expected):
            return None  # another generation, another notebook, or made up
        if who == "link":
            return False
        principal = await self._auth.by_id(who) if self._auth else None
        if principal is None:
            return None  # revoked or expired since the session began
        try:
            return self._may_open(route, principal)
        except Refused:
            return None

    def check_origin(self, route: Route, headers, *, websocket: bool = False) -> None:
        """Only the notebook's own pages may call it: a page of another origin (another
        notebook, any site) gets nothing but a link followed."""
        own = self.origin(route.notebook_id).lower()
        origin = headers.get("origin")
        if origin is not None and origin.lower() != own:
            raise Refused(403, f"requests from {origin} to notebook {route.notebook_id} refused")
        site = headers.get("sec-fetch-site")
        navigating = headers.get("sec-fetch-mode") == "navigate" and not websocket
        if site in ("cross-site", "same-site") and not navigating:
            raise Refused(403, f"{site} requests to notebook {route.notebook_id} refused")

    async def admit(self, conn, notebook_id: str) -> tuple[Route, Access]:
        """(route, access) for a request or WebSocket to a notebook, or Refused: who may
        come in, from where, and whether it serves now."""
        cached = self._routes.get(notebook_id, (0.0,))[0] > time.monotonic()
        route = await self.route(notebook_id)
        if cached and (route.state != NotebookState.RUNNING or route.tunnel is None):
            # The cached route may be from before a start (or a move): ask once more
            # before saying it does not serve.
            self.invalidate(notebook_id)
            route = await self.route(notebook_id)
        self.check_origin(route, conn.headers, websocket=conn.scope["type"] == "websocket")
        access = await self.authorize(route, conn.query_params, conn.headers, conn.cookies)
        self.serving(route)
        return route, access

    async def authorize(self, route: Route, query, headers, cookies) -> Access:
        """An explicit token must be valid, else the cookie must be; nothing valid is a
        401. An unsecure_http notebook needs none: nothing is checked or added."""
        if route.unsecure_http:
            return Access(authorized=False)
        explicit = query.get("token")
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if explicit is None and scheme.lower() in ("token", "bearer") and value:
            explicit = value.strip()
        if explicit is not None and self._editors_own(route, explicit):
            # JupyterLab puts its own token in its pages, and its scripts send it back:
            # it opens nothing here (the session cookie decides), and is replaced.
            explicit = None
        if explicit is not None:
            found = await self._who(route, explicit)
            if found is None:
                raise Refused(401, f"the token is not valid for notebook {route.notebook_id}")
            who, read_only = found
            return Access(True, read_only, self._session(route, who))
        cookie = cookies.get(COOKIE_PREFIX + route.notebook_id)
        session = await self._session_valid(route, cookie) if cookie else None
        if session is not None:
            return Access(True, session)
        raise Refused(
            401,
            f"notebook {route.notebook_id} is private: open the link in its status.url (or "
            "add ?token= with an API token that may open it)"
            + ("; the link you used is from before a token rotation" if cookie else ""),
        )

    def editor_credentials(
        self, route: Route, read_only: bool = False
    ) -> tuple[dict[str, str], dict[str, str]]:
        """Headers and cookies that sign a request in to the editor itself (only for a
        request authorize() let in, so never for an unsecure_http notebook)."""
        if read_only:  # JupyterLab only (_may_open): its read-only visitor's token
            reader = editor_read_token(self._secret, route.notebook_id)
            return {"authorization": f"token {reader}"}, {}
        token = self._service.editor_token(route.notebook_id)
        if route.editor is Editor.VSCODE:
            hashed = self._session_cookies.get(route.notebook_id)
            if hashed is None:
                hashed = _HASHER.hash(token)
                self._session_cookies[route.notebook_id] = hashed
            return {}, {CODE_SERVER_COOKIE: hashed}
        return {"authorization": f"token {token}"}, {}

    def set_cookie(self, response: Response, route: Route, session: str, secure: bool) -> None:
        # Host-only (no Domain): no other notebook's origin ever receives it. Strict: a
        # page of another site can never make the browser send it.
        response.set_cookie(
            COOKIE_PREFIX + route.notebook_id,
            session,
            path="/",
            httponly=True,
            samesite="strict",
            secure=secure,
        )

    # ------------------------------------------------------------------ headers

    def upstream_headers(
        self,
        route: Route,
        headers,
        authorized: bool,
        *,
        websocket: bool = False,
        read_only: bool = False,
    ) -> dict[str, str]:
        """What the editor is sent: the browser's headers (its Host and Origin are the
        notebook's own, which the editor's origin checks accept), less the gateway's
        cookie and credentials, plus the editor's own when the visitor was let in."""
        out: dict[str, str] = {}
        for name, value in headers.items():
            lname = name.lower()
            if (lname in HOP_BY_HOP and lname != "content-length") or lname == "cookie":
                continue
            if websocket and (lname.startswith("sec-websocket-") or lname in ("origin", "host")):
                continue
            if lname == "authorization" and authorized:
                continue  # an API token is the gateway's business, not the editor's
            out[lname] = value
        cookies = _cookie_pairs(headers.get("cookie", ""))
        cookies.pop(COOKIE_PREFIX + route.notebook_id, None)
        if authorized:
            extra_headers, extra_cookies = self.editor_credentials(route, read_only)
            out.update(extra_headers)
            cookies.update(extra_cookies)
        if cookies:
            out["cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        out["x-forwarded-proto"] = headers.get("x-forwarded-proto", _scheme(self.pattern))
        return out


def downstream_cookie(value: bytes) -> bytes:
    """An editor's Set-Cookie, host-only: a Domain attribute would hand the cookie to every
    notebook under the same parent domain."""
    parts = [p for p in value.split(b";") if not p.strip().lower().startswith(b"domain=")]
    return b";".join(parts)


def _scheme(pattern: str) -> str:
    return pattern.split("://", 1)[0]


def _cookie_pairs(header: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name:
            pairs[name] = value
    return pairs
