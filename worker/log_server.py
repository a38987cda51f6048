"""The host agent's log endpoint: the API streams a notebook's container output from the
host that runs it (the way an API server reads logs from a kubelet).

`GET /logs/{notebook_id}?tail=N&follow=1`, with the agent token (derived from the shared
secret) as a bearer token. The runtime's blocking stream is read in a thread; when the
client goes away the stream is closed, which ends the read blocked in that thread.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
import weakref
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from activities.runtime.base import ContainerRuntime, LogStream
from domain.config import Settings
from domain.ids import valid_notebook_id
from domain.tokens import agent_token

log = logging.getLogger("ainb.logs")
# A followed stream holds a thread for as long as it lasts: they get their own pool, so
# they can never starve the agent's other work (reconciliation uses the default one).
MAX_STREAMS = 64


def _next_chunk(iterator: Iterator[bytes]) -> bytes | None:
    """The stream's next chunk, or None once it has ended (a chunk is never None)."""
    return next(iterator, None)


async def relay(stream: LogStream, pool: ThreadPoolExecutor, done) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    iterator = iter(stream)
    try:
        while True:
            chunk = await loop.run_in_executor(pool, _next_chunk, iterator)
            if chunk is None:
                return
            if chunk:
                yield chunk
    finally:
        stream.close()
        done()


def build_app(settings: Settings, runtime: ContainerRuntime) -> Starlette:
    expected = f"Bearer {agent_token(settings.token_secret.get_secret_value())}"
    pool = ThreadPoolExecutor(MAX_STREAMS, thread_name_prefix="logs")
    # Weak: a stream whose response never started is forgotten once collected.
    live: weakref.WeakSet = weakref.WeakSet()

    async def logs(request: Request) -> Response:
        if not hmac.compare_digest(request.headers.get("authorization", ""), expected):
            return PlainTextResponse("a valid agent token is needed", status_code=401)
        notebook_id = request.path_params["notebook_id"]
        if not valid_notebook_id(notebook_id):
            return PlainTextResponse("no such notebook", status_code=404)
        try:
            tail = int(request.query_params.get("tail", "-1"))
        except ValueError:
            return PlainTextResponse("tail: an integer is needed", status_code=422)
        follow = request.query_params.get("follow", "") in ("1", "true")
        if len(live) >= MAX_STREAMS - 1:
            return PlainTextResponse(
                f"this host already serves {len(live)} log streams; try again later",
                status_code=503,
            )
        loop = asyncio.get_running_loop()
        stream = await loop.run_in_executor(pool, runtime.log_stream, notebook_id, tail, follow)
        if stream is None:
            return PlainTextResponse(
                f"no container of notebook {notebook_id} on this host", status_code=404
            )
        live.add(stream)
        return StreamingResponse(
            relay(stream, pool, lambda: live.discard(stream)),
            media_type="text/plain; charset=utf-8",
        )

    return Starlette(routes=[Route("/logs/{notebook_id}", logs)])


class LogServer:
    """Listens on the host's address; port 0 takes a free one (several agents per machine)."""

    def __init__(self, settings: Settings, runtime: ContainerRuntime) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((settings.host_address, settings.host_logs_port))
        host, port = self._sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        config = uvicorn.Config(
            build_app(settings, runtime), log_level="warning", lifespan="off", access_log=False
        )
        self._server = uvicorn.Server(config)

    async def serve(self) -> None:
        await self._server.serve(sockets=[self._sock])

    def stop(self) -> None:
        self._server.should_exit = True
