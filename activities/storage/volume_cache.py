"""Host-local copies of `cache` volumes, one per project and bucket/prefix.

A notebook's pull first brings the host's copy up to date (only what changed is
downloaded), then fills the notebook's own directory from it by local copies. The
notebook never shares files with the cache, so what it writes never reaches another
notebook. Copies unused for the configured time are evicted.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from activities.storage.errors import SyncCancelled

log = logging.getLogger(__name__)

LOCK = ".lock"
LAST_USED = ".last-used"


class VolumeCache:
    def __init__(self, root: Path, ttl_s: float) -> None:
        self.root = root
        self.ttl_s = ttl_s

    def entry(self, project: str, alias: str, bucket: str, prefix: str) -> Path:
        key = hashlib.sha256(f"{alias}\0{bucket}\0{prefix.strip('/')}".encode()).hexdigest()
        return self.root / project / key[:32]

    @staticmethod
    def data(entry: Path) -> Path:
        return entry / "data"

    @contextlib.contextmanager
    def locked(self, entry: Path, should_stop: Callable[[], bool] | None = None) -> Iterator[None]:
        """Hold the entry exclusively: one pull at a time fills it or copies from it, and
        eviction never removes it under a reader."""
        entry.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(entry / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if should_stop is not None and should_stop():
                            raise SyncCancelled(
                                "cancelled while waiting for the volume cache"
                            ) from None
                        time.sleep(0.2)
                # Evicted while we waited: the lock file we hold is no longer the entry's.
                try:
                    same = os.stat(entry / LOCK).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    yield
                    return
                entry.mkdir(parents=True, exist_ok=True)
            finally:
                os.close(fd)

    @staticmethod
    def touch(entry: Path) -> None:
        (entry / LAST_USED).touch()

    def evict(self, now: float | None = None) -> list[Path]:
        """Remove the entries nobody used for ``ttl_s``; skip any in use right now."""
        now = time.time() if now is None else now
        removed: list[Path] = []
        if not self.root.is_dir():
            return removed
        for project in self.root.iterdir():
            for entry in project.iterdir() if project.is_dir() else ():
                try:
                    used = (entry / LAST_USED).stat().st_mtime
                except FileNotFoundError:
                    used = entry.stat().st_mtime
                if now - used < self.ttl_s:
                    continue
                try:
                    fd = os.open(entry / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
                except FileNotFoundError:
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                try:
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry)
                    log.info("evicted volume cache %s (unused for %.0fs)", entry, now - used)
                finally:
                    os.close(fd)
            with contextlib.suppress(OSError):
                project.rmdir()  # only when empty
        return removed
