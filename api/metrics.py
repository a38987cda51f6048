"""The API's /metrics (Prometheus text): its requests (REST and gateway), and what the
platform holds at the moment of the scrape: notebooks by state and project (visibility),
the fleet's queue and free capacity (the fleet's query), billed minutes (the ledger).

The scrape-time numbers are read at most every CACHE_S, whoever scrapes and however
often, so that two Prometheus replicas and a dashboard cost what one does."""

from __future__ import annotations

import asyncio
import hmac
import time
from collections import Counter
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Histogram,
    generate_latest,
)
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import authenticate
from api.errors import ApiError
from domain import protocol
from domain import search_attributes as sa
from domain.access import Action, refusal
from domain.gateway import GATEWAY_ROOT

CACHE_S = 10.0

REQUESTS = PromCounter(
    "ainb_http_requests", "requests answered, by kind (api, gateway)", ["kind", "method", "code"]
)
LATENCY = Histogram(
    "ainb_http_request_seconds",
    "time to the response's first byte, by kind",
    ["kind"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class RequestMetrics:
    """Counts every HTTP request and times it to its first byte (a long poll or an event
    stream is counted when it begins answering). Outermost: a notebook origin's requests
    go to the gateway without reaching the API's routes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/metrics":
            await self.app(scope, receive, send)
            return
        kind = "gateway" if _for_gateway(scope) else "api"
        began = time.perf_counter()

        async def timed(message: Message) -> None:
            if message["type"] == "http.response.start":
                LATENCY.labels(kind).observe(time.perf_counter() - began)
                REQUESTS.labels(kind, scope["method"], str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, timed)


def _for_gateway(scope: Scope) -> bool:
    if scope["path"].startswith(GATEWAY_ROOT):
        return True
    gateway = getattr(getattr(scope.get("app"), "state", None), "gateway", None)
    host = Headers(scope=scope).get("host", "")
    return gateway is not None and gateway.notebook_for_host(host) is not None


router = APIRouter(tags=["metrics"])
_bearer = HTTPBearer(auto_error=False)


async def _scraper(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None,
) -> None:
    token = request.app.state.settings.metrics_token
    if credentials and token is not None:
        if hmac.compare_digest(credentials.credentials.encode(), token.get_secret_value().encode()):
            return
    # Otherwise the fleet's readers: it names every project's notebooks and every host.
    principal = await authenticate(request, credentials)
    if why := refusal(principal, Action.HOSTS, None):
        raise ApiError(403, why)


@router.get("/metrics", dependencies=[Depends(_scraper)], include_in_schema=False)
async def metrics(request: Request) -> Response:
    scrape: Scrape = request.app.state.scrape
    registry = CollectorRegistry()
    registry.register(await scrape.collector())
    body = generate_latest(REGISTRY) + generate_latest(registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


class _Families:
    def __init__(self, families: list) -> None:
        self.families = families

    def collect(self):
        return iter(self.families)


class Scrape:
    """The scrape-time numbers, read at most every CACHE_S by one reader at a time."""

    def __init__(self, client, fleet, ledger) -> None:
        self._client = client
        self._fleet = fleet
        self._ledger = ledger
        self._at = 0.0
        self._cached: _Families | None = None
        self._lock = asyncio.Lock()

    async def collector(self) -> _Families:
        async with self._lock:
            if self._cached is None or time.monotonic() - self._at > CACHE_S:
                self._cached = _Families(await self._read())
                self._at = time.monotonic()
            return self._cached

    async def _read(self) -> list:
        families: list = []
        up = GaugeMetricFamily("ainb_scrape_source_up", "a source answered", labels=["source"])
        for source, read in (
            ("visibility", self._notebooks),
            ("fleet", self._capacity),
            ("ledger", self._billed),
        ):
            try:
                families.extend(await read())
                up.add_metric([source], 1)
            except Exception:  # a source down is a 0 here, not a failed scrape
                up.add_metric([source], 0)
        families.append(up)
        return families

    async def _notebooks(self) -> list:
        query = (
            f"WorkflowType = '{protocol.NOTEBOOK_WORKFLOW_TYPE}' AND ExecutionStatus = 'Running'"
        )
        counts: Counter[tuple[str, str]] = Counter()
        async for execution in self._client.list_workflows(query):
            attrs = execution.typed_search_attributes
            counts[(attrs.get(sa.PROJECT) or "", attrs.get(sa.STATE) or "")] += 1
        family = GaugeMetricFamily(
            "ainb_notebooks", "notebooks by state and project", labels=["project", "state"]
        )
        for (project, state), n in sorted(counts.items()):
            family.add_metric([project, state], n)
        return [family]

    async def _capacity(self) -> list:
        view = await self._fleet.view()
        queued = GaugeMetricFamily("ainb_queue_length", "requests queued", labels=["flavor"])
        free = GaugeMetricFamily(
            "ainb_free_units_largest_host",
            "units of a flavor one notebook could get now",
            labels=["flavor"],
        )
        for flavor, numbers in sorted(view.flavors.items()):
            queued.add_metric([flavor], numbers.get("queued", 0))
            free.add_metric([flavor], numbers.get("free_units_largest_host", 0))
        hosts = GaugeMetricFamily("ainb_host_up", "a host's agent is alive", labels=["host"])
        cpus = GaugeMetricFamily("ainb_host_free_cpus", "CPUs free", labels=["host"])
        mem = GaugeMetricFamily("ainb_host_free_memory_gib", "memory free", labels=["host"])
        gpus = GaugeMetricFamily("ainb_host_free_gpus", "GPUs free", labels=["host"])
        for h in view.hosts:
            hosts.add_metric([h.name], 1 if h.state == "up" else 0)
            cpus.add_metric([h.name], h.free_cpus)
            mem.add_metric([h.name], h.free_memory_gib)
            gpus.add_metric([h.name], len(h.free_gpu_ids))
        return [queued, free, hosts, cpus, mem, gpus]

    async def _billed(self) -> list:
        rows = await asyncio.to_thread(self._ledger.totals)
        minutes = CounterMetricFamily(
            "ainb_billed_minutes", "minutes billed, all projects", labels=["flavor", "kind"]
        )
        units = CounterMetricFamily(
            "ainb_billed_unit_minutes", "minutes times units billed", labels=["flavor", "kind"]
        )
        for row in rows:
            minutes.add_metric([row["flavor"], row["kind"]], row["minutes"])
            units.add_metric([row["flavor"], row["kind"]], row["unit_minutes"])
        return [minutes, units]
