"""A log file read like `tail -n N [-f]`: the output of runtimes that write one (the
local-process runtime), with the same close() contract as Docker's log stream."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

POLL_S = 0.25
CHUNK = 64 * 1024


class FileLogStream:
    def __init__(
        self,
        path: Path | None,
        tail: int,
        follow: bool,
        alive: Callable[[], bool] = lambda: False,
    ) -> None:
        self._path = path
        self._tail = tail
        self._follow = follow
        self._alive = alive
        self._closed = threading.Event()

    def close(self) -> None:
        self._closed.set()

    def __iter__(self) -> Iterator[bytes]:
        if self._path is None or not self._path.exists():
            return
        with open(self._path, "rb") as f:
            if self._tail == 0:
                f.seek(0, 2)
            elif self._tail > 0:
                if lines := deque(f, maxlen=self._tail):
                    yield b"".join(lines)
            else:
                while chunk := f.read(CHUNK):
                    yield chunk
            while self._follow and not self._closed.is_set():
                chunk = f.read(CHUNK)
                if chunk:
                    yield chunk
                    continue
                if not self._alive():
                    yield f.read()  # what it wrote while exiting
                    return
                self._closed.wait(POLL_S)
