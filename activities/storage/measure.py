"""How much a local tree holds: what a status says stays unsaved on a host."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from activities.storage.beneath import DIR_FLAGS


def measure_tree(root: Path) -> tuple[int, int]:
    """(files, bytes) below ``root``, by descriptors, never following a symlink (a tree a
    notebook wrote may point anywhere on the host)."""
    try:
        fd = os.open(root, DIR_FLAGS)
    except OSError:
        return 0, 0
    try:
        return _measure(fd)
    finally:
        os.close(fd)


def _measure(dirfd: int) -> tuple[int, int]:
    files = size = 0
    with os.scandir(dirfd) as it:
        names = [de.name for de in it]
    for name in names:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                fd = os.open(name, DIR_FLAGS, dir_fd=dirfd)
                try:
                    f, b = _measure(fd)
                finally:
                    os.close(fd)
                files, size = files + f, size + b
            else:
                files, size = files + 1, size + st.st_size
    return files, size


def real_dir_below(root: Path, rel: str) -> Path | None:
    """``root/rel`` if every part of it is a directory, not a symlink; else None."""
    path = root
    for part in Path(rel).parts:
        path = path / part
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                return None
        except OSError:
            return None
    return path
