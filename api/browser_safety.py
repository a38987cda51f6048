"""What a browser may do to the REST API: name it by one of its own host names (a
DNS-rebinding page names its own, and is refused), and change nothing from a page of
another origin unless the operator allowed that origin (`cors_origins`).

Credentials are only ever read from the Authorization header (api/auth.py), which a page
of another origin cannot set on a simple request; these checks keep that true even for a
token a page somehow learned, and keep the API's answers from other sites' scripts."""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from domain.config import Settings

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


def api_hosts(settings: Settings) -> frozenset[str]:
    """Every `Host` value the API answers to: public_url's, its loopback aliases when it
    is a loopback address, and the operator's `allowed_hosts`."""
    url = urlsplit(settings.public_url)
    host = (url.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = url.port or (443 if url.scheme == "https" else 80)
    names = {host} | (set(_LOOPBACK) if host in _LOOPBACK else set())
    out = {f"{n}:{port}" for n in names}
    if port == (443 if url.scheme == "https" else 80):
        out |= names  # a default port may be left out of Host
    out |= {h.lower() for h in settings.allowed_hosts}
    return frozenset(out)


def api_origins(settings: Settings) -> frozenset[str]:
    scheme = urlsplit(settings.public_url).scheme or "http"
    own = {f"{scheme}://{h}" for h in api_hosts(settings)}
    return frozenset(own | {o.rstrip("/").lower() for o in settings.cors_origins})


class ApiGuard:
    """ASGI middleware in front of the REST API (after the notebook origins are served)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.hosts = api_hosts(settings)
        self.origins = api_origins(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self.refusal(scope.get("method", "GET"), headers)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": refusal[:120]})
            return
        await JSONResponse({"error": refusal}, status_code=403)(scope, receive, send)

    def refusal(self, method: str, headers: Headers) -> str | None:
        host = headers.get("host", "").lower()
        if host not in self.hosts:
            known = ", ".join(sorted(self.hosts))
            return (
                f"host {host or '(none)'!r} is not a name of this API ({known}); an operator "
                "adds names in allowed_hosts"
            )
        if method.upper() in SAFE_METHODS:
            return None
        origin = headers.get("origin")
        if origin is not None and origin.rstrip("/").lower() not in self.origins:
            return (
                f"a {method} from a page of {origin} is refused: state-changing requests "
                "come from the API's own origin or one in cors_origins"
            )
        site = headers.get("sec-fetch-site")
        if origin is None and site in ("cross-site", "same-site"):
            return f"a {site} {method} is refused: state-changing requests come from the API's own origin"
        return None
