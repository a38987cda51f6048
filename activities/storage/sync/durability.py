"""Making pulled files, and the renames that put them in place, durable on disk.

``fsync`` for a few paths, one Linux ``syncfs`` per file system for many (via
ctypes, when available), and ``sync_file_range`` to start the writeback of large
downloads early.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
from typing import Any

from activities.storage.beneath import Tree, swapped
from activities.storage.sync.constants import _FSYNC_EACH_MAX

log = logging.getLogger(__name__)


_libc: Any = None


def _libc_fn(name: str) -> Any:
    """A libc function via ctypes, or None (not Linux / not available)."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
        except OSError:
            _libc = False
    if _libc is False:
        return None
    return getattr(_libc, name, None)


def _start_writeback(fd: int) -> None:
    """Ask the kernel to start writing ``fd``'s dirty pages now (``sync_file_range``).

    Overlaps the disk writes of a large download with the download itself, so
    that the fsync before the rename has little left to wait for.  Best effort.
    """
    fn = _libc_fn("sync_file_range")
    if fn is not None:
        fn(fd, ctypes.c_longlong(0), ctypes.c_longlong(0), ctypes.c_uint(2))  # _WRITE


_syncfs_ok = True


def _syncfs(tree: Tree, rel: str) -> bool:
    """Flush the whole file system holding directory ``rel`` (Linux ``syncfs``); False
    if unsupported."""
    global _syncfs_ok
    fn = _libc_fn("syncfs") if _syncfs_ok else None
    if fn is None:
        return False
    with tree.dir(rel) as fd:
        if fn(fd) != 0:
            err = ctypes.get_errno()
            if err == errno.ENOSYS:
                _syncfs_ok = False
                return False
            raise OSError(err, os.strerror(err), tree.where(rel))
    return True


def _fsync_rel(tree: Tree, rel: str, directory: bool) -> None:
    if directory:
        try:
            with tree.dir(rel) as fd:
                os.fsync(fd)
        except OSError as exc:
            if not (isinstance(exc, (FileNotFoundError, NotADirectoryError)) or swapped(exc)):
                raise
            # removed (or swapped for a symlink) meanwhile by the notebook: the renames
            # we made in it are no longer ours to keep
            log.debug("not fsyncing %s: %s", tree.where(rel), exc)
        return
    fd = tree.open(rel, os.O_RDONLY | os.O_NONBLOCK)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_durable(
    tree: Tree, rels_by_dev: dict[int, list[str]], *, directories: bool = False
) -> None:
    """Make files (or, with ``directories``, the renames inside directories) durable.

    The caller groups the relative paths by file system from the stat it already has.
    A few are fsynced one by one: cheap when their data is already on disk (large
    downloads use direct I/O) and blind to other processes' dirty data.  Many small
    files take one ``syncfs`` per file system instead of one journal commit each.
    """
    for rels in rels_by_dev.values():
        if len(rels) > _FSYNC_EACH_MAX:
            where = rels[0] if directories else os.path.dirname(rels[0])
            try:
                if _syncfs(tree, where):
                    continue
            except OSError as exc:
                if not directories or not (
                    isinstance(exc, (FileNotFoundError, NotADirectoryError)) or swapped(exc)
                ):
                    raise
                # a directory removed or swapped meanwhile: fsync the others one by one
        for r in rels:
            _fsync_rel(tree, r, directories)
