"""Reaching an editor through the Unix socket it listens on, in its notebook's directory.

The directory is bind-mounted into the container, so the notebook's user controls what
sits at the socket's path: a symlink planted there would make the host agent (root)
connect wherever it points, the Docker engine's socket included. So the path is opened
with O_PATH|O_NOFOLLOW, must be a socket, and is connected through the descriptor
(/proc/self/fd/N names that very inode; nothing is resolved again).
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path


class NoEditorSocket(OSError):
    """Nothing listens at the path, or what is there is not a socket."""


def connect(path: Path, timeout: float | None = None) -> socket.socket:
    """A connected, blocking (or timed) socket to the editor at ``path``."""
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NoEditorSocket(f"no editor socket at {path}") from None
    except OSError as err:  # ELOOP: a symlink
        raise NoEditorSocket(f"{path} is not an editor socket: {err.strerror}") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise NoEditorSocket(f"{path} is not a socket")
        sock.settimeout(timeout)
        sock.connect(f"/proc/self/fd/{fd}")
    except BaseException:
        sock.close()
        raise
    finally:
        os.close(fd)
    return sock


def probe(path: Path, request_path: str, timeout: float = 2.0) -> int | None:
    """The HTTP status the editor answers ``GET request_path`` with, or None when nothing
    answers there (yet)."""
    try:
        sock = connect(path, timeout)
    except OSError:
        return None
    with sock:
        try:
            sock.sendall(
                f"GET {request_path} HTTP/1.1\r\nHost: localhost\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            head = sock.recv(64)
        except OSError:
            return None
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return None
    return int(parts[1])
