"""Server-sent events of a notebook's changes (`GET …/{id}/events`).

Two kinds of event, each with ``id:`` a status.version (what Last-Event-ID resumes from):
``transition`` for every change of state the workflow made (from ``status.transitions``,
so a state held for less time than a status read takes is still delivered), then
``notebook``, the notebook as GET shows it, for every change a reader would see.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from domain.status import Notebook

# A comment line this often keeps proxies and clients from taking a quiet stream for dead.
KEEPALIVE_S = 15.0


def _event(kind: str, version: int, body: str) -> bytes:
    return f"event: {kind}\nid: {version}\ndata: {body}\n\n".encode()


async def sse(changes: AsyncIterator[Notebook], after_version: int | None) -> AsyncIterator[bytes]:
    """The stream of ``changes``; transitions are those newer than what the client had
    (``after_version``, or the first notebook sent)."""
    yield b"retry: 1000\n\n"
    it = changes.__aiter__()
    next_change: asyncio.Task[Notebook] | None = None
    sent = after_version
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
            if sent is not None:
                for t in notebook.status.transitions:
                    if t.version > sent:
                        yield _event("transition", t.version, t.model_dump_json())
            sent = max(sent or 0, notebook.status.version)
            yield _event("notebook", notebook.status.version, notebook.model_dump_json())
    finally:
        if next_change is not None:
            next_change.cancel()
            with contextlib.suppress(BaseException):
                await next_change
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(BaseException):
                await aclose()
