"""The REST facade: a thin layer over the Temporal client."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI

from api import errors, gateway
from api.client import services
from api.gateway import Gateway
from api.logs import LogService
from api.routers import capabilities, fleet, health, notebooks, usage
from domain.config import Settings
from worker.connect import connect


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.load()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The same services as the Python client (api/client.py): one code path.
        svc = services(await connect(settings), settings)
        app.state.settings = settings
        app.state.client = svc.client
        app.state.fleet = svc.fleet
        app.state.service = svc.notebooks
        app.state.usage = svc.usage
        app.state.gateway = Gateway(svc.notebooks, settings)
        app.state.logs = LogService(svc.notebooks, svc.fleet, settings)
        try:
            yield
        finally:
            await app.state.gateway.aclose()
            await app.state.logs.aclose()

    app = FastAPI(
        title="ainb",
        description="Managed AI notebooks: each one a durable Temporal workflow.",
        version="0.1.0",
        lifespan=lifespan,
    )
    errors.install(app)
    app.include_router(health.router)
    app.include_router(notebooks.router)
    app.include_router(usage.router)
    app.include_router(fleet.router)
    app.include_router(capabilities.router)
    app.include_router(gateway.router)
    return app


def main() -> None:
    uvicorn.run(
        create_app(),
        host=os.environ.get("AINB_API_HOST", "127.0.0.1"),
        port=int(os.environ.get("AINB_API_PORT", "8000")),
        log_level="info",
    )


if __name__ == "__main__":
    main()
