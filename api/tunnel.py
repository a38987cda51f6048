"""The gateway's side of the host agents' editor tunnels (worker/editor_tunnel.py).

A tunnel is a TCP connection to the agent that runs the notebook, which, asked for that
notebook's editor, joins it to the editor's socket. HTTP is then spoken to the editor
over it (h11, one request at a time, kept alive and pooled per notebook: a lean path,
since every request of every editor page takes it). WebSockets get a tunnel of their
own, handed to the websockets client as its socket.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import h11

HEAD_LIMIT = 4096


class TunnelRefused(OSError):
    """The agent did not open the tunnel (no such editor there, or a bad token)."""


def connect_request(notebook_id: str, token: str) -> bytes:
    return (
        f"CONNECT {notebook_id} HTTP/1.1\r\nHost: {notebook_id}\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    ).encode()


def check_answer(head: bytes, notebook_id: str) -> None:
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or parts[1] != "200":
        body = head.partition(b"\r\n\r\n")[2].decode(errors="replace")
        raise TunnelRefused(f"the host refused a tunnel to notebook {notebook_id}: {body}")


class Targets:
    """notebook id -> (agent host, port): where each notebook's tunnel goes now."""

    def __init__(self) -> None:
        self._where: dict[str, tuple[str, int]] = {}

    def set(self, notebook_id: str, address: str) -> None:
        host, _, port = address.rpartition(":")
        self._where[notebook_id] = (host.strip("[]"), int(port))

    def get(self, notebook_id: str) -> tuple[str, int] | None:
        return self._where.get(notebook_id)

    def drop(self, notebook_id: str) -> None:
        self._where.pop(notebook_id, None)


class Tunnels:
    """Open tunnels to editors, HTTP/1.1 keep-alive, kept per notebook for the next request
    (a page's many requests share a few). An idle one is dropped after IDLE_S, or as soon
    as the editor's side has closed it."""

    IDLE_S = 30.0
    PER_NOTEBOOK = 16

    def __init__(self, targets: Targets, token: str) -> None:
        self._targets = targets
        self._token = token
        self._idle: dict[str, list[tuple[float, asyncio.StreamReader, asyncio.StreamWriter]]] = {}

    async def acquire(
        self, notebook_id: str
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
        """(reader, writer, reused)."""
        loop = asyncio.get_running_loop()
        idle = self._idle.get(notebook_id, [])
        while idle:
            since, reader, writer = idle.pop()
            if loop.time() - since < self.IDLE_S and not reader.at_eof():
                return reader, writer, True
            writer.close()
        sock = await open_socket(self._targets, self._token, notebook_id)
        reader, writer = await asyncio.open_connection(sock=sock, limit=2**20)
        return reader, writer, False

    def release(self, notebook_id: str, reader, writer) -> None:
        idle = self._idle.setdefault(notebook_id, [])
        if len(idle) >= self.PER_NOTEBOOK:
            writer.close()
            return
        idle.append((asyncio.get_running_loop().time(), reader, writer))

    def drop(self, notebook_id: str) -> None:
        for _, _, writer in self._idle.pop(notebook_id, []):
            writer.close()

    def close(self) -> None:
        for notebook_id in list(self._idle):
            self.drop(notebook_id)


class Answer:
    """An editor's response: status, headers, and its body as it comes. The tunnel goes
    back to the pool once the body has been read whole, else it is closed."""

    def __init__(self, tunnels: Tunnels, notebook_id: str, conn: h11.Connection, reader, writer,
                 response: h11.Response) -> None:  # fmt: skip
        self.status = response.status_code
        self.headers = response.headers
        self._tunnels, self._notebook_id = tunnels, notebook_id
        self._conn, self._reader, self._writer = conn, reader, writer
        self._open = True

    async def body(self) -> AsyncIterator[bytes]:
        try:
            while True:
                event = await _next_event(self._conn, self._reader)
                if isinstance(event, h11.Data):
                    yield bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:  # ConnectionClosed: the body ran until the editor closed
                    break
            if self._conn.our_state is h11.DONE and self._conn.their_state is h11.DONE:
                self._conn.start_next_cycle()
                self._tunnels.release(self._notebook_id, self._reader, self._writer)
                self._open = False
        finally:
            self.close()

    def close(self) -> None:
        if self._open:
            self._open = False
            self._writer.close()


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader):
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await reader.read(2**16))


async def exchange(
    tunnels: Tunnels,
    notebook_id: str,
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    body: AsyncIterator[bytes] | None,
) -> Answer:
    """Send one request to the notebook's editor and read its answer's head. A tunnel
    that was idle in the pool may have been closed by the editor meanwhile: a request
    without a body is then sent again once on a fresh one (nothing of it was taken)."""
    if body is not None and not any(k == "content-length" for k, _ in headers):
        headers = [*headers, ("transfer-encoding", "chunked")]
    while True:
        reader, writer, reused = await tunnels.acquire(notebook_id)
        conn = h11.Connection(h11.CLIENT)
        try:
            writer.write(conn.send(h11.Request(method=method, target=target, headers=headers)))
            if body is not None:
                async for chunk in body:
                    if chunk:
                        writer.write(conn.send(h11.Data(data=chunk)))
                        await writer.drain()
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
            while True:
                event = await _next_event(conn, reader)
                if isinstance(event, h11.Response):
                    return Answer(tunnels, notebook_id, conn, reader, writer, event)
                if isinstance(event, h11.ConnectionClosed):
                    raise ConnectionResetError("the editor closed the connection")
        except (OSError, h11.RemoteProtocolError) as err:
            writer.close()
            if reused and body is None and not isinstance(err, h11.RemoteProtocolError):
                continue
            raise TunnelRefused(
                f"the editor of notebook {notebook_id} did not answer: {err}"
            ) from err
        except BaseException:
            writer.close()
            raise


async def open_socket(targets: Targets, token: str, notebook_id: str) -> socket.socket:
    """A tunnel to the notebook's editor, as a connected socket (for WebSockets)."""
    where = targets.get(notebook_id)
    if where is None:
        raise TunnelRefused(f"no host is known to run notebook {notebook_id}")
    loop = asyncio.get_running_loop()
    info = await loop.getaddrinfo(where[0], where[1], type=socket.SOCK_STREAM)
    family, kind, proto, _, address = info[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.wait_for(loop.sock_connect(sock, address), 10)
        await loop.sock_sendall(sock, connect_request(notebook_id, token))
        head = b""
        while b"\r\n\r\n" not in head:
            # One byte at a time past the head would be slow; the agent sends nothing
            # after its answer until the editor speaks, and the editor waits for us.
            chunk = await asyncio.wait_for(loop.sock_recv(sock, HEAD_LIMIT), 10)
            if not chunk or len(head) > HEAD_LIMIT:
                raise TunnelRefused(f"the host closed the tunnel to {notebook_id}")
            head += chunk
        check_answer(head, notebook_id)
    except BaseException:
        sock.close()
        raise
    return sock
