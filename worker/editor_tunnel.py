"""The host agent's editor tunnel: the gateway's only way to the editors on this host.

A notebook's container has no network; its editor listens on a Unix socket in the
notebook's directory. The gateway opens a TCP connection here and asks for one notebook,
HTTP CONNECT style, with the tunnel token (derived from the server secret):

    CONNECT <notebook id> HTTP/1.1
    Authorization: Bearer <token>

and, after `HTTP/1.1 200`, speaks HTTP or WebSocket to the editor itself over the same
connection: the agent only copies bytes. So the API and the agents may be on different
machines, and nothing needs a network path to a container.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
from pathlib import Path

from activities.paths import NotebookPaths, notebooks_dir
from activities.runtime import editor_socket
from domain.config import Settings
from domain.ids import valid_notebook_id
from domain.tokens import tunnel_token

log = logging.getLogger("ainb.tunnel")
HEAD_LIMIT = 4096
CHUNK = 256 * 1024


class EditorTunnel:
    def __init__(self, settings: Settings) -> None:
        self._root = notebooks_dir(settings.data_dir, settings.host_name)
        self._expected = f"Bearer {tunnel_token(settings.token_secret.get_secret_value())}"
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((settings.host_address, settings.host_editor_port))
        self._sock.listen(512)
        host, port = self._sock.getsockname()[:2]
        self.address = f"{host}:{port}"
        self._server: asyncio.Server | None = None

    async def serve(self) -> None:
        self._server = await asyncio.start_server(self._handle, sock=self._sock, limit=CHUNK)
        async with self._server:
            await self._server.serve_forever()

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    def socket_path(self, notebook_id: str) -> Path:
        return NotebookPaths(self._root, notebook_id).editor_socket

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # asyncio sets TCP_NODELAY only on sockets made with proto IPPROTO_TCP, which an
        # accepted one is not: without it every small WebSocket frame waits ~40 ms for
        # the peer's delayed ACK.
        conn = writer.get_extra_info("socket")
        if conn is not None:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            editor = await self._open(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            editor = None
        if editor is None:
            with contextlib.suppress(OSError):
                writer.close()
            return
        e_reader, e_writer = editor
        await _splice(reader, writer, e_reader, e_writer)

    async def _open(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > HEAD_LIMIT:
            return await _answer(writer, 431, "request head too large")
        lines = head.decode("latin-1").split("\r\n")
        method, _, rest = lines[0].partition(" ")
        target = rest.partition(" ")[0]
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
        }
        if not hmac.compare_digest(
            headers.get("authorization", "").encode(), self._expected.encode()
        ):
            return await _answer(writer, 401, "a valid tunnel token is needed")
        if method != "CONNECT" or not valid_notebook_id(target):
            return await _answer(writer, 400, "CONNECT <notebook id> is all this serves")
        loop = asyncio.get_running_loop()
        try:
            sock = await loop.run_in_executor(
                None, editor_socket.connect, self.socket_path(target), 5.0
            )
        except OSError as err:
            return await _answer(writer, 404, f"no editor of notebook {target} answers: {err}")
        sock.setblocking(False)
        e_reader, e_writer = await asyncio.open_unix_connection(sock=sock, limit=CHUNK)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        return e_reader, e_writer


async def _answer(writer: asyncio.StreamWriter, status: int, message: str) -> None:
    body = message.encode()
    writer.write(
        f"HTTP/1.1 {status} X\r\ncontent-type: text/plain\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n".encode()
        + body
    )
    with contextlib.suppress(OSError):
        await writer.drain()
    return None


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        pass


async def _splice(a_reader, a_writer, b_reader, b_writer) -> None:
    """Copy both ways until either side closes, then close both."""
    tasks = [
        asyncio.create_task(_pipe(a_reader, b_writer)),
        asyncio.create_task(_pipe(b_reader, a_writer)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        # A half-close is an answer finished, not the end: let the other way drain a bit.
        await asyncio.wait(tasks, timeout=30)
    finally:
        for task in tasks:
            task.cancel()
        for w in (a_writer, b_writer):
            with contextlib.suppress(OSError):
                w.close()
