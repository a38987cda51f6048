"""The local side of a pull: its state, and what it does to the tree besides downloads.

:class:`_PullLocal` is the bottom of the pull's class chain (``_PullLocal`` <-
:class:`~activities.storage.sync.pull_download._PullDownload` <-
:class:`~activities.storage.sync.pull._Puller`): the state of one pull, renaming a
finished temporary file into place, moving local data that is not known to be in
storage into the ``.{name}.preserved`` area instead of destroying it, and the final
pass that removes stale temporary files and (``delete=True``) local extras.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import stat
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from activities.storage.beneath import Tree, move_entry
from activities.storage.sync.common import _Ctx, _depth, _FileProblem
from activities.storage.sync.manifest import _Manifest
from activities.storage.sync.runner import _Progress, _Runner
from activities.storage.sync.scan import _local_matches, _scan_local

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _PullItem:
    key: str
    rel: str
    marker: bool
    size: int
    etag: str
    lm: str  # LastModified from the listing
    preserve: bool = False  # move the existing local file aside before replacing it


@dataclass(slots=True)
class _GetJob:
    """One download into a temporary file (the CRT writes it through ``fd``)."""

    tree: Tree
    tmp: str  # relative to the tree
    fd: int
    attempt: int
    progress: _Progress | None

    def discard(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
        with contextlib.suppress(OSError):
            self.tree.unlink(self.tmp)


@dataclass(slots=True)
class _Pending:
    """A complete temporary file waiting to be made durable and renamed into place."""

    item: _PullItem
    tmp: str  # relative to the tree
    size: int
    etag: str
    st: os.stat_result  # of the finished temporary file (same inode after the rename)
    seeded: bool


class _PullLocal:
    """State of one pull; placing, preserving and removing local entries."""

    # set by _Puller._run_opened() and _Puller._run() before anything below runs
    manifest: _Manifest
    push_manifest: _Manifest
    clean_start: bool
    old_entries: dict[str, dict]

    def __init__(self, ctx, delete, progress, should_stop, workers, seed_from=None) -> None:
        self.ctx: _Ctx = ctx
        self.root: Path = ctx.local_dir
        self.rootp = os.fspath(ctx.local_dir)
        self.delete = delete
        self.runner = _Runner(ctx, progress, should_stop, workers, "downloading")
        self.bad_dirs: dict[str, str] = {}  # rel -> why it could not be created
        name = ctx.local_dir.name
        stamp = f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"
        self.preserve_root = ctx.local_dir.parent / f".{name}.preserved" / stamp
        self._preserve_lock = threading.Lock()
        self.preserved: list[str] = []
        self.kept: list[str] = []
        self.pending: list[_Pending] = []
        self.pending_bytes = 0
        self.pending_since = 0.0
        # dev -> directories with renames not yet durable
        self.renamed_dirs: dict[int, set[str]] = {}
        self.large_jobs: dict[int, _GetJob] = {}  # large downloads in flight
        self.syncing: tuple[Future, list[_Pending]] | None = None  # batch being fsynced
        self.durable_pool: ThreadPoolExecutor | None = None
        self.last_writeback = 0.0
        self.seed_root = ""
        self.seed_entries: dict[str, dict] = {}
        self.seed_tree: Tree | None = None
        self.seed_from = seed_from
        self._tree: Tree | None = None  # local_dir, opened once by run()
        self.preserve_tree: Tree | None = None

    @property
    def tree(self) -> Tree:
        """local_dir as opened by run(); nothing touches the tree before that."""
        if self._tree is None:
            raise RuntimeError("the local tree is used before run() opened it")
        return self._tree

    def _known_synced(self, key: str, st: os.stat_result | None, rel: str) -> bool:
        """Is the local object exactly what an earlier sync recorded (so not unsynced work)?"""
        m = self.old_entries.get(key)
        return m is not None and _local_matches(m, st, self.tree, rel)

    def _preserve_dir(self, rel: str) -> tuple[Tree, str]:
        """Make the preserved area's directory for ``rel``; return (area, relative dest).

        The area is ours (next to ``local_dir``, which the notebook cannot see), but what
        we move into it comes from the tree, symlinks included: its directories are also
        made and reached beneath its root, never through a symlink."""
        with self._preserve_lock:
            if self.preserve_tree is None:
                self.preserve_root.mkdir(parents=True, exist_ok=True)
                self.preserve_tree = Tree(self.preserve_root)
            area = self.preserve_tree
            head, _, name = rel.rpartition("/")
            try:
                area.makedirs(head)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTDIR, errno.ELOOP):
                    raise
                # something preserved earlier (a file or symlink) has a parent's name
                head = f"{secrets.token_hex(3)}/{head}" if head else secrets.token_hex(3)
                area.makedirs(head)
            dest = f"{head}/{name}" if head else name
            if area.lstat(dest) is not None:
                dest = f"{dest}.{secrets.token_hex(3)}"
            self.preserved.append(rel)
        return area, dest

    def _preserve(self, rel: str) -> None:
        """Move local ``rel`` out of the tree instead of destroying it."""
        area, dest = self._preserve_dir(rel)
        with self.tree.parent(rel) as (sfd, sname), area.parent(dest) as (dfd, dname):
            # a rename; if local_dir is a mount point, a copy then a removal, both by
            # descriptors (never following a symlink)
            move_entry(sfd, sname, dfd, dname)
        self.tree.forget(rel)  # if it was a directory: a new one may take its name

    def _remove(self, rel: str, key: str) -> None:
        """Remove a local file/symlink, preserving it unless a sync recorded exactly it."""
        tree = self.tree
        if self._known_synced(key, tree.lstat(rel), rel):
            tree.unlink(rel)
        else:
            self._preserve(rel)

    def _place(self, tmp: str, item: _PullItem) -> None:
        """Atomically move ``tmp`` (made in ``item.rel``'s directory) to ``item.rel``,
        replacing what is in the way if allowed.  Both names are used relative to the one
        descriptor of that directory (the temporary file's, if it is still cached), so
        the rename cannot land anywhere else."""
        rel = item.rel
        tmpname = tmp.rpartition("/")[2]
        with self.tree.parent(rel) as (dfd, name):

            def lexists() -> os.stat_result | None:
                try:
                    return os.stat(name, dir_fd=dfd, follow_symlinks=False)
                except FileNotFoundError:
                    return None

            if item.preserve and lexists() is not None:
                self._preserve(rel)
            try:
                os.replace(tmpname, name, src_dir_fd=dfd, dst_dir_fd=dfd)
                return
            except OSError as exc:
                if exc.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                    raise
            st = lexists()
            if st is None or not stat.S_ISDIR(st.st_mode):
                os.replace(tmpname, name, src_dir_fd=dfd, dst_dir_fd=dfd)
                return
            if self.delete:
                self._preserve(rel)  # never rmtree: the directory may hold unsynced work
            else:
                try:
                    os.rmdir(name, dir_fd=dfd)
                except OSError:
                    raise _FileProblem(
                        f"a local directory is in the way of the remote file '{rel}' (not "
                        "removed because delete=False and it is not empty)"
                    ) from None
                self.tree.forget(rel)
            self.runner.stats.files_deleted += 1
            os.replace(tmpname, name, src_dir_fd=dfd, dst_dir_fd=dfd)

    # -- cleanup / delete ---------------------------------------------------

    def _cleanup_local(self, files: dict[str, _PullItem], dirs: set[str]) -> None:
        runner, stats = self.runner, self.runner.stats
        if not self.delete and self.clean_start and not runner.failures:
            return  # nothing to delete and no temporary files left over by an earlier pull
        try:
            local, errors, tmpfiles = _scan_local(self.tree, (), one_fs=True)
        except OSError as exc:
            runner.fail(".", f"cannot scan the local directory: {exc.strerror}")
            return
        for rel in tmpfiles:  # leftovers of an interrupted pull: never user data
            with contextlib.suppress(OSError):
                self.tree.unlink(rel)
        if not self.delete:
            return
        for rel, msg in errors:
            runner.fail(rel, msg)
        if runner.failures:
            log.warning(
                "pull %s -> %s: not deleting local files because %d file(s) failed",
                self.ctx.where,
                self.root,
                len(runner.failures),
            )
            return
        kp = self.ctx.kp
        for e in sorted(local.values(), key=lambda e: _depth(e.rel), reverse=True):
            try:
                if e.kind == "d":
                    if e.rel in dirs:
                        continue
                    self.tree.rmdir(e.rel)
                else:
                    if e.rel in files:
                        continue
                    self._remove(e.rel, kp + e.rel)
                    self.manifest.entries.pop(kp + e.rel, None)
                    self.push_manifest.entries.pop(kp + e.rel, None)
                stats.files_deleted += 1
            except FileNotFoundError:
                continue
            except OSError as exc:
                runner.fail(e.rel, f"could not delete the local copy: {exc.strerror}")
