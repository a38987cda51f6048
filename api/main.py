"""The REST facade: a thin layer over the Temporal client."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from api import errors, gateway_routes, metrics
from api.auth import Authenticator
from api.browser_safety import ApiGuard
from api.client import services
from api.fast_reads import FastReads
from api.gateway import Gateway
from api.logs import LogService
from api.metrics import RequestMetrics, Scrape
from api.routers import capabilities, fleet, health, notebooks, tokens, usage
from domain.config import Settings
from ledger.access_store import AccessStore
from ledger.usage import UsageLedger
from temporal_client.connect import connect


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.load()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The gateway and the log proxy check tokens derived from it: none, no server.
        settings.require_token_secret()
        # The same services as the Python client (api/client.py): one code path.
        svc = services(await connect(settings), settings)
        app.state.settings = settings
        app.state.client = svc.client
        app.state.fleet = svc.fleet
        app.state.service = svc.notebooks
        app.state.usage = svc.usage
        app.state.auth = Authenticator(settings, AccessStore(settings.ledger))
        app.state.gateway = Gateway(svc.notebooks, settings, svc.fleet, svc.client, app.state.auth)
        app.state.logs = LogService(svc.notebooks, svc.fleet, settings)
        app.state.scrape = Scrape(svc.client, svc.fleet, UsageLedger(settings.ledger))
        try:
            yield
        finally:
            await app.state.gateway.aclose()
            await svc.notebooks.aclose()
            await app.state.logs.aclose()

    app = FastAPI(
        title="ainb",
        description="Managed AI notebooks: each one a durable Temporal workflow. Every call "
        "but /healthz wants an API token: `Authorization: Bearer <token>`.",
        version="0.1.0",
        lifespan=lifespan,
    )
    errors.install(app)
    app.include_router(health.router)
    app.include_router(notebooks.router)
    app.include_router(usage.router)
    app.include_router(fleet.router)
    app.include_router(capabilities.router)
    app.include_router(tokens.router)
    app.include_router(gateway_routes.router)
    app.include_router(metrics.router)
    # Innermost of ours: behind the Host, origin and CORS handling like every route.
    app.add_middleware(FastReads)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["authorization", "content-type"],
            allow_credentials=False,  # credentials are a header, never a cookie
        )
    app.add_middleware(ApiGuard, settings=settings)
    # Outermost: a notebook's origin is the gateway's whatever the path, never the API's.
    app.add_middleware(gateway_routes.NotebookOrigins)
    app.add_middleware(RequestMetrics)
    return app


_TOKEN_IN_QUERY = re.compile(r"(?i)((?:^|[?&])token=)[^&#\s]*")


class RedactTokens(logging.Filter):
    """Access logs name each request's path and query (HTTP in uvicorn.access, WebSockets
    in uvicorn.error): a `?token=` there is a credential (a notebook link's), so it is
    written as `token=***`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _TOKEN_IN_QUERY.sub(r"\1***", a) if isinstance(a, str) and "token=" in a else a
                for a in record.args
            )
        return True


class QuietReads(logging.Filter):
    """The `changes` access log: a read that succeeded (GET or HEAD answered below 400)
    is logged at debug level, so dropped unless the logger is at debug. A logger's filter
    runs before any handler formats: a dropped line costs next to nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        # uvicorn's access line: (client, method, path with query, HTTP version, status)
        if isinstance(args, tuple) and len(args) == 5 and args[1] in ("GET", "HEAD"):
            status = args[4]
            if isinstance(status, int) and status < 400:
                if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
                    return False
                record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


def main() -> None:
    settings = Settings.load()
    if settings.access_log == "changes":
        logging.getLogger("uvicorn.access").addFilter(QuietReads())
    for name in ("uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).addFilter(RedactTokens())
    settings.require_token_secret()  # before anything listens: a clear message, exit 1
    uvicorn.run(
        create_app(settings),
        host=os.environ.get("AINB_API_HOST", "127.0.0.1"),
        port=int(os.environ.get("AINB_API_PORT", "8000")),
        log_level="info",
    )


if __name__ == "__main__":
    main()
