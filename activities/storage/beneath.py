"""Work inside a directory tree that someone else is changing, never escaping it.

The host agent (root) reads and writes notebooks' live trees (the workspace, ``rw``
volumes) while hostile code in the container can replace any directory or file in them
with a symlink, at any moment.  A full path string is resolved again by every system
call, and ``O_NOFOLLOW`` only protects its last component, so ``open(root/d/f)`` may
open ``/etc/f`` if ``d`` just became a symlink to ``/etc``.

:class:`Tree` opens the tree's root once (its own path is the caller's, trusted) and
resolves every relative path beneath that descriptor without following any symlink in
any component: with ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
RESOLVE_NO_MAGICLINKS)`` where the kernel has it (Linux 5.6+, and not refused by a
seccomp filter), else by a walk from the root, one component at a time, with
``O_NOFOLLOW | O_DIRECTORY`` directory descriptors.  Every operation is then done by
name relative to a directory descriptor (``dir_fd=``, ``src_dir_fd=``/``dst_dir_fd=``,
``follow_symlinks=False``).  A symlink planted in the path makes the operation fail with
``ELOOP`` (or ``ENOTDIR`` for a file in the way): see :func:`swapped`.  Nothing is ever
read or written outside the tree.  A directory whose descriptor is already open (the
cache of :meth:`Tree.dir`) stays the same directory even if it is renamed and replaced
by a symlink afterwards: what is done through it still lands in that directory, which
is still inside the tree (a rename cannot cross a mount point).

Relative paths are POSIX, without empty, ``.`` or ``..`` components, never absolute.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import shutil
import stat
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "Tree",
    "chown_tree",
    "copy_entry",
    "count_files",
    "move_entry",
    "openat2_available",
    "remove_entry",
    "swapped",
]

log = logging.getLogger(__name__)

RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
_RESOLVE = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
_SYS_OPENAT2 = 437  # the same number on every Linux architecture (unified table)
_AT_FDCWD = -100

_O_PATH = getattr(os, "O_PATH", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_TMPFILE = getattr(os, "O_TMPFILE", 0)
#: how intermediate directories are opened by the fallback walk
_WALK_FLAGS = (_O_PATH or os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | _O_CLOEXEC
#: directories we list, fsync or use as ``dir_fd``
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _O_CLOEXEC

#: Set to False (or the environment variable AINB_NO_OPENAT2=1) to always walk.
use_openat2 = os.environ.get("AINB_NO_OPENAT2", "") in ("", "0")

#: errnos meaning "a symlink (or a file) is where a directory was": a swap, refused
_SWAP_ERRNOS = frozenset({errno.ELOOP, errno.ENOTDIR, errno.EXDEV})


def swapped(exc: BaseException) -> bool:
    """Did ``exc`` come from a path that no longer leads where it did (a symlink or a
    file planted in one of its components)?  Such a failure is never an escape."""
    return isinstance(exc, OSError) and exc.errno in _SWAP_ERRNOS


# --------------------------------------------------------------------------
# openat2
# --------------------------------------------------------------------------


class _OpenHow(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


_syscall: Callable[..., int] | None = None  # libc's syscall(), set by the probe
_openat2_state: bool | None = None  # None: not probed yet
_probe_lock = threading.Lock()


def _raw_openat2(dirfd: int, path: bytes, flags: int, mode: int, resolve: int) -> int:
    # openat2 wants mode 0 unless a file may be created (O_TMPFILE includes O_DIRECTORY)
    creates = flags & os.O_CREAT or (_O_TMPFILE and flags & _O_TMPFILE == _O_TMPFILE)
    how = _OpenHow(flags, mode if creates else 0, resolve)
    syscall = _syscall
    if syscall is None:
        raise OSError(errno.ENOSYS, "openat2 was not probed")
    while True:
        fd = syscall(_SYS_OPENAT2, dirfd, path, ctypes.byref(how), ctypes.sizeof(how))
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err == errno.EINTR:
            continue
        raise OSError(err, os.strerror(err))


def openat2_available() -> bool:
    """Can this process use ``openat2`` (probed once; ``use_openat2`` can turn it off)?"""
    global _openat2_state, _syscall
    if not use_openat2:
        return False
    if _openat2_state is None:
        with _probe_lock:
            if _openat2_state is None:
                ok = False
                if sys.platform.startswith("linux"):
                    try:
                        libc = ctypes.CDLL(None, use_errno=True)
                        fn = libc.syscall
                        fn.restype = ctypes.c_long
                        fn.argtypes = [
                            ctypes.c_long,
                            ctypes.c_int,
                            ctypes.c_char_p,
                            ctypes.c_void_p,
                            ctypes.c_size_t,
                        ]
                        _syscall = fn
                        # ENOSYS (old kernel) or EPERM/ENOSYS from a seccomp filter: walk
                        fd = _raw_openat2(
                            _AT_FDCWD, b"/", os.O_RDONLY | os.O_DIRECTORY | _O_CLOEXEC, 0, 0
                        )
                        os.close(fd)
                        ok = True
                    except (OSError, AttributeError) as exc:
                        log.info("openat2 is not available (%s): walking paths instead", exc)
                _openat2_state = ok
    return _openat2_state


def _split(rel: str) -> list[str]:
    if not rel or rel.startswith("/") or "\0" in rel:
        raise OSError(errno.EINVAL, f"not a safe relative path: {rel!r}")
    parts = rel.split("/")
    for p in parts:
        if p in ("", ".", ".."):
            raise OSError(errno.EINVAL, f"not a safe relative path: {rel!r}")
    return parts


def open_beneath(dirfd: int, rel: str, flags: int, mode: int = 0o600) -> int:
    """Open ``rel`` beneath the directory ``dirfd``, following no symlink in any
    component (the last one included: a symlink there is ``ELOOP``, also with
    ``O_DIRECTORY``, where the kernel says ``ENOTDIR``)."""
    try:
        return _open_beneath(dirfd, rel, flags, mode)
    except NotADirectoryError:
        if not flags & os.O_DIRECTORY or not _is_symlink(dirfd, rel):
            raise
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), rel) from None


def _is_symlink(dirfd: int, rel: str) -> bool:
    """Is ``rel`` (its parents resolved safely) a symlink?  For error messages only."""
    head, _, name = rel.rpartition("/")
    try:
        pfd = _open_beneath(dirfd, head, os.O_RDONLY | os.O_DIRECTORY, 0) if head else dirfd
    except OSError:
        return False
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=pfd, follow_symlinks=False).st_mode)
    except OSError:
        return False
    finally:
        if pfd != dirfd:
            os.close(pfd)


def _open_beneath(dirfd: int, rel: str, flags: int, mode: int) -> int:
    parts = _split(rel)
    flags |= _O_CLOEXEC | os.O_NOFOLLOW
    if openat2_available():
        for _ in range(8):
            try:
                return _raw_openat2(dirfd, os.fsencode(rel), flags, mode, _RESOLVE)
            except OSError as exc:
                # EAGAIN: the kernel saw a concurrent rename and would not vouch for the
                # result; try again (a few times), then give up as a swap would
                if exc.errno != errno.EAGAIN:
                    exc.filename = rel
                    raise
        raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN), rel)
    fd = dirfd
    try:
        for i, name in enumerate(parts[:-1]):
            try:
                nfd = os.open(name, _WALK_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno == errno.ENOTDIR:  # say "symlink" (ELOOP) when it is one
                    with contextlib.suppress(OSError):
                        if stat.S_ISLNK(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                            exc = OSError(errno.ELOOP, os.strerror(errno.ELOOP))
                exc.filename = "/".join(parts[: i + 1])
                raise exc from None
            if fd != dirfd:
                os.close(fd)
            fd = nfd
        try:
            return os.open(parts[-1], flags, mode, dir_fd=fd)
        except OSError as exc:
            exc.filename = rel
            raise
    finally:
        if fd != dirfd:
            os.close(fd)


# --------------------------------------------------------------------------
# a tree
# --------------------------------------------------------------------------


class _Slot:
    __slots__ = ("dead", "fd", "refs")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.refs = 0
        self.dead = False


class _Held:
    """``with tree.dir(rel) as fd`` (a class: cheaper than a generator per call)."""

    __slots__ = ("name", "slot", "tree")

    def __init__(self, tree: Tree, slot: _Slot | None, name: str | None) -> None:
        self.tree, self.slot, self.name = tree, slot, name

    def __enter__(self):
        fd = self.tree.fd if self.slot is None else self.slot.fd
        return fd if self.name is None else (fd, self.name)

    def __exit__(self, *exc: object) -> None:
        if self.slot is not None:
            self.tree._release(self.slot)


class Tree:
    """A directory opened once, and everything beneath it reached without symlinks.

    Thread-safe.  Directory descriptors are cached (up to ``cache_size``, least
    recently used first out; one in use is closed only once released), so that
    the many operations in one directory resolve it once."""

    def __init__(self, path: str | os.PathLike[str], *, cache_size: int = 128) -> None:
        self.path = os.fspath(path)
        # the root's own path is the caller's (trusted): following a symlink there is fine
        self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | _O_CLOEXEC)
        self._cache: OrderedDict[str, _Slot] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def __enter__(self) -> Tree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Tree({self.path!r})"

    def close(self) -> None:
        with self._lock:
            slots = list(self._cache.values())
            self._cache.clear()
            for s in slots:
                s.dead = True
                if s.refs == 0:
                    os.close(s.fd)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def where(self, rel: str) -> str:
        """For messages only: never pass this to a system call."""
        return os.path.join(self.path, rel) if rel else self.path

    # -- opening -------------------------------------------------------------

    def open(self, rel: str, flags: int, mode: int = 0o600) -> int:
        """A new descriptor for ``rel`` (never through a symlink); the caller closes it."""
        if not rel:
            return os.open(".", flags | _O_CLOEXEC, dir_fd=self.fd)
        return open_beneath(self.fd, rel, flags, mode)

    def opendir(self, rel: str) -> int:
        return self.open(rel, DIR_FLAGS)

    def dir(self, rel: str) -> _Held:
        """``with tree.dir(rel) as fd``: the (cached) descriptor of directory ``rel``."""
        if not rel:
            return _Held(self, None, None)
        return _Held(self, self._acquire(rel), None)

    def parent(self, rel: str) -> _Held:
        """``with tree.parent(rel) as (dirfd, name)``: ``rel``'s directory and base name."""
        head, _, name = rel.rpartition("/")
        if not name or name in (".", ".."):
            raise OSError(errno.EINVAL, f"not a safe relative path: {rel!r}")
        return _Held(self, self._acquire(head) if head else None, name)

    def _acquire(self, rel: str) -> _Slot:
        with self._lock:
            slot = self._cache.get(rel)
            if slot is not None:
                slot.refs += 1
                self._cache.move_to_end(rel)
                return slot
        fd = self.opendir(rel)  # outside the lock: it may walk
        with self._lock:
            slot = self._cache.get(rel)
            if slot is not None:  # another thread was quicker
                os.close(fd)
                slot.refs += 1
                self._cache.move_to_end(rel)
                return slot
            slot = _Slot(fd)
            slot.refs = 1
            self._cache[rel] = slot
            while len(self._cache) > self._cache_size:
                for key, old in self._cache.items():
                    if old.refs == 0:
                        del self._cache[key]
                        os.close(old.fd)
                        break
                else:
                    break  # all in use: let the cache grow for now
            return slot

    def _release(self, slot: _Slot) -> None:
        with self._lock:
            slot.refs -= 1
            if slot.dead and slot.refs == 0:
                os.close(slot.fd)

    def forget(self, rel: str) -> None:
        """Drop cached descriptors of ``rel`` and below (it was moved away or removed:
        a new ``rel`` must be resolved again, not reached through the old directory)."""
        if not rel:
            return
        below = rel + "/"
        with self._lock:
            for key in [k for k in self._cache if k == rel or k.startswith(below)]:
                slot = self._cache.pop(key)
                slot.dead = True
                if slot.refs == 0:
                    os.close(slot.fd)

    # -- operations by relative path ------------------------------------------

    def lstat(self, rel: str) -> os.stat_result | None:
        """``lstat`` of ``rel``; None if it (or a parent) does not exist or a parent is a
        file.  A symlink in a parent raises ``ELOOP``."""
        try:
            if not rel:
                return os.fstat(self.fd)
            with self.parent(rel) as (dfd, name):
                return os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def readlink(self, rel: str) -> str:
        with self.parent(rel) as (dfd, name):
            return os.readlink(name, dir_fd=dfd)

    def unlink(self, rel: str) -> None:
        with self.parent(rel) as (dfd, name):
            os.unlink(name, dir_fd=dfd)

    def rmdir(self, rel: str) -> None:
        with self.parent(rel) as (dfd, name):
            os.rmdir(name, dir_fd=dfd)
        self.forget(rel)

    def makedirs(self, rel: str, mode: int = 0o777) -> None:
        """Create ``rel`` and its missing parents; an existing symlink or file in the way
        is an error (``ELOOP``/``ENOTDIR``), never followed."""
        os.close(self.makedirs_fd(rel, mode))

    def makedirs_fd(self, rel: str, mode: int = 0o777) -> int:
        """:meth:`makedirs`, returning a new descriptor of ``rel`` (the caller closes it):
        the directory made, wherever the notebook moves it afterwards."""
        if not rel:
            return os.dup(self.fd)
        fd = self.fd
        try:
            for name in _split(rel):
                try:
                    os.mkdir(name, mode, dir_fd=fd)
                except FileExistsError:
                    pass
                nfd = os.open(name, DIR_FLAGS, dir_fd=fd)  # ELOOP if it is a symlink
                if fd != self.fd:
                    os.close(fd)
                fd = nfd
            result, fd = fd, self.fd
            return result
        finally:
            if fd != self.fd:
                os.close(fd)


# --------------------------------------------------------------------------
# moving, copying, removing entries by (directory descriptor, name)
# --------------------------------------------------------------------------


def remove_entry(dirfd: int, name: str) -> None:
    """Remove a file, symlink or whole directory ``name`` in ``dirfd`` (never following
    a symlink: ``shutil.rmtree`` with ``dir_fd`` walks by descriptors)."""
    st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dirfd)
    else:
        os.unlink(name, dir_fd=dirfd)


def copy_entry(src_dirfd: int, src: str, dst_dirfd: int, dst: str) -> int:
    """Copy ``src`` (file, symlink or directory tree, never following a symlink) to a new
    ``dst``; keep modes (without setuid/setgid) and mtimes.  Return the files copied.
    Sockets, FIFOs and devices are left out."""
    st = os.stat(src, dir_fd=src_dirfd, follow_symlinks=False)
    m = st.st_mode
    if stat.S_ISLNK(m):
        os.symlink(os.readlink(src, dir_fd=src_dirfd), dst, dir_fd=dst_dirfd)
        with contextlib.suppress(OSError):
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dst_dirfd,
                     follow_symlinks=False)  # fmt: skip
        return 1
    if stat.S_ISREG(m):
        sfd = os.open(
            src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _O_CLOEXEC, dir_fd=src_dirfd
        )
        try:
            dfd = os.open(
                dst,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _O_CLOEXEC,
                0o600,
                dir_fd=dst_dirfd,
            )
            try:
                sst = os.fstat(sfd)
                if not stat.S_ISREG(sst.st_mode):
                    raise OSError(errno.ELOOP, "no longer a regular file", src)
                while os.sendfile(dfd, sfd, None, 64 * 1024 * 1024) > 0:
                    pass
                os.fchmod(dfd, stat.S_IMODE(sst.st_mode) & 0o1777)
                os.utime(dfd, ns=(sst.st_atime_ns, sst.st_mtime_ns))
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)
        return 1
    if not stat.S_ISDIR(m):
        log.info("not copying special file %s", src)
        return 0
    sfd = os.open(src, DIR_FLAGS, dir_fd=src_dirfd)
    try:
        os.mkdir(dst, 0o700, dir_fd=dst_dirfd)
        dfd = os.open(dst, DIR_FLAGS, dir_fd=dst_dirfd)
        try:
            n = 0
            with os.scandir(sfd) as it:
                names = [de.name for de in it]
            for name in names:
                try:
                    n += copy_entry(sfd, name, dfd, name)
                except FileNotFoundError:
                    continue  # removed meanwhile
            sst = os.fstat(sfd)
            os.fchmod(dfd, stat.S_IMODE(sst.st_mode) & 0o1777)
            os.utime(dfd, ns=(sst.st_atime_ns, sst.st_mtime_ns))
            return n
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)


def count_files(dirfd: int, name: str) -> int:
    """How many non-directories ``name`` in ``dirfd`` holds (itself if it is one), by
    descriptors, never following a symlink."""
    st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    if not stat.S_ISDIR(st.st_mode):
        return 1
    fd = os.open(name, DIR_FLAGS, dir_fd=dirfd)
    try:
        with os.scandir(fd) as it:
            names = [de.name for de in it]
        n = 0
        for child in names:
            with contextlib.suppress(FileNotFoundError):
                n += count_files(fd, child)
        return n
    finally:
        os.close(fd)


def move_entry(src_dirfd: int, src: str, dst_dirfd: int, dst: str) -> None:
    """Move ``src`` to ``dst`` (which must not exist): a rename, or across file systems
    (``EXDEV``) a copy (:func:`copy_entry`) and then removal of the source."""
    try:
        os.rename(src, dst, src_dir_fd=src_dirfd, dst_dir_fd=dst_dirfd)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    try:
        copy_entry(src_dirfd, src, dst_dirfd, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            remove_entry(dst_dirfd, dst)
        raise
    remove_entry(src_dirfd, src)


# --------------------------------------------------------------------------
# ownership
# --------------------------------------------------------------------------


def chown_tree(root: Path, uid: int, gid: int) -> int:
    """``lchown`` ``root`` and everything beneath it to ``uid:gid``; return how many.

    Never follows a symlink (a symlink itself is chowned, not its target), walks by
    directory descriptors (a directory swapped for a symlink meanwhile is skipped, with
    a log line), and does not cross mount points (a directory on another file system is
    neither entered nor chowned)."""
    tree = Tree(root)
    count = 0
    try:
        top = os.fstat(tree.fd)
        os.fchown(tree.fd, uid, gid)
        count += 1
        dev = top.st_dev
        stack = [""]
        while stack:
            d = stack.pop()
            try:
                fd = tree.opendir(d) if d else os.dup(tree.fd)
            except OSError as exc:
                if not swapped(exc) and not isinstance(exc, FileNotFoundError):
                    raise
                log.warning("chown %s: skipping %s: %s", root, d, exc.strerror)
                continue
            try:
                with os.scandir(fd) as it:
                    names = [de.name for de in it]
                for name in names:
                    rel = f"{d}/{name}" if d else name
                    try:
                        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        if st.st_dev != dev:
                            log.info("chown %s: not crossing mount point %s", root, rel)
                            continue
                        try:
                            cfd = os.open(name, DIR_FLAGS, dir_fd=fd)
                        except OSError as exc:
                            if not swapped(exc) and not isinstance(exc, FileNotFoundError):
                                raise
                            continue
                        try:
                            cst = os.fstat(cfd)
                            if cst.st_dev != dev:  # swapped for a mount point meanwhile
                                continue
                            os.fchown(cfd, uid, gid)
                        finally:
                            os.close(cfd)
                        stack.append(rel)
                    else:
                        try:
                            # lchownat: a symlink itself, never its target
                            os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
                        except FileNotFoundError:
                            continue
                    count += 1
            finally:
                os.close(fd)
    finally:
        tree.close()
    return count
