"""Server-sent events of a notebook's changes (`GET …/{id}/events`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from domain.status import Notebook

# A comment line this often keeps proxies and clients from taking a quiet stream for dead.
KEEPALIVE_S = 15.0


async def sse(changes: AsyncIterator[Notebook]) -> AsyncIterator[bytes]:
    """`event: notebook` per change, `id:` its version (what Last-Event-ID resumes from)."""
    yield b"retry: 1000\n\n"
    it = changes.__aiter__()
    next_change: asyncio.Task[Notebook] | None = None
    try:
        while True:
            if next_change is None:
                next_change = asyncio.ensure_future(it.__anext__())
            done, _ = await asyncio.wait({next_change}, timeout=KEEPALIVE_S)
            if not done:
                yield b": keepalive\n\n"
                continue
            try:
                notebook = next_change.result()
            except StopAsyncIteration:
                return
            finally:
                next_change = None
            body = notebook.model_dump_json()
            yield f"event: notebook\nid: {notebook.status.version}\ndata: {body}\n\n".encode()
    finally:
        if next_change is not None:
            next_change.cancel()
            with contextlib.suppress(BaseException):
                await next_change
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(BaseException):
                await aclose()
