"""The REST facade: a thin layer over the Temporal client."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI

from api import errors
from api.fleet import FleetService
from api.routers import capabilities, fleet, health, notebooks, usage
from api.service import NotebookService
from api.usage import UsageService
from domain.config import Settings
from ledger.sqlite import SqliteLedger
from worker.connect import connect


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.load()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = await connect(settings)
        app.state.settings = settings
        app.state.client = client
        app.state.fleet = FleetService(client, settings)
        app.state.service = NotebookService(client, settings, app.state.fleet)
        app.state.usage = UsageService(app.state.service, SqliteLedger(settings.ledger_file))
        yield

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
