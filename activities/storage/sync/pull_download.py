"""The transfers of a pull: downloads, seeding from a local copy, durability batches.

:class:`_PullDownload` starts one CRT GET per file into a temporary file created
beneath the tree (retrying broken streams), applies the object's metadata (or makes
a symlink), copies files from ``seed_from`` when its manifest proves they hold the
object's bytes, and hands finished files to batches that are made durable in the
background and then renamed into place.  Directory markers only get their metadata
applied (HEAD through boto3).
"""

from __future__ import annotations

import contextlib
import email.utils
import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from decimal import Decimal
from typing import Any

from activities.storage.crt_engine import CrtCancelled, Transfer
from activities.storage.sync.common import (
    _Changed,
    _decode_target,
    _etag,
    _Interrupted,
    _new_tmp_name,
    _parse_mode,
    _parse_mtime,
    _ShortRead,
)
from activities.storage.sync.constants import (
    _FLUSH_BYTES,
    _FLUSH_FILES,
    _FLUSH_SECONDS,
    _HAVE_PROC_FD,
    _IO_CHUNK,
    _PROC_FD,
    _STREAM_ATTEMPTS,
    META_MODE,
    META_MTIME,
    META_SYMLINK,
    MULTIPART_THRESHOLD,
    MiB,
)
from activities.storage.sync.durability import _make_durable, _start_writeback
from activities.storage.sync.error_map import _map_error
from activities.storage.sync.pull_local import _GetJob, _Pending, _PullItem, _PullLocal
from activities.storage.sync.runner import _Done, _Progress
from activities.storage.sync.scan import _entry_from_stat, _local_matches

log = logging.getLogger(__name__)


def _copy_fd(src: int, dst: int, size: int, cancel: threading.Event) -> None:
    """Copy ``size`` bytes (copy_file_range: reflink/server-side where possible)."""
    chunk = 64 * MiB
    done = 0
    use_cfr = hasattr(os, "copy_file_range")
    while done < size:
        if cancel.is_set():
            raise _Interrupted()
        n = 0
        if use_cfr:
            try:
                n = os.copy_file_range(src, dst, min(chunk, size - done), done, done)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                use_cfr = False
                continue
        else:
            data = os.pread(src, min(_IO_CHUNK * 8, size - done), done)
            view = memoryview(data)
            while view:
                w = os.pwrite(dst, view, done + n)
                view = view[w:]
                n += w
        if n == 0:
            raise _Changed("the seed copy is shorter than its manifest says")
        done += n


class _PullDownload(_PullLocal):
    """Downloading objects (or seeding them) and placing them durably."""

    def _on_done(self, item: _PullItem, done: _Done | None) -> None:
        if done is None:
            return
        stats = self.runner.stats
        stats.files_done += 1
        stats.bytes_done += done.nbytes
        if done.entry is not None:
            entry = dict(done.entry)
            if entry.get("etag") == item.etag:  # what we got is what the listing showed
                entry["lm"] = item.lm
            self.manifest.entries[done.key] = entry
            self.push_manifest.entries[done.key] = dict(done.entry)
        else:
            self.manifest.entries.pop(done.key, None)
            self.push_manifest.entries.pop(done.key, None)
        self.runner.mark_dirty()

    def _start_get(self, item: _PullItem, notify: Callable[[Transfer], None]) -> Any:
        if self.runner.cancel_event.is_set():
            raise _Interrupted()
        if self.seed_entries and self._try_seed(item):
            return None  # copied; recorded when its batch is made durable
        return self._get(item, notify, 1)

    def _open_tmp(self, rel: str) -> tuple[str, int]:
        """Create a temporary file next to ``rel`` (in its directory as resolved beneath
        the root; O_EXCL|O_NOFOLLOW: never via a symlink); return (its rel, its fd)."""
        head = rel.rpartition("/")[0]
        name = _new_tmp_name()
        with self.tree.dir(head) as dfd:
            fd = os.open(
                name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o666,
                dir_fd=dfd,
            )
        return (f"{head}/{name}" if head else name), fd

    def _get(self, item: _PullItem, notify: Callable[[Transfer], None], attempt: int) -> Transfer:
        tmp, fd = self._open_tmp(item.rel)
        progress = _Progress(self.runner) if item.size >= MULTIPART_THRESHOLD else None
        job = _GetJob(self.tree, tmp, fd, attempt, progress)
        if progress is not None:
            self.large_jobs[id(job)] = job
        try:
            return self.runner.engine.get(
                self.ctx.bucket,
                item.key,
                fd,
                notify,
                context=job,
                on_progress=progress,
                expected_size=item.size,
                recv_filepath=f"{_PROC_FD}/{fd}" if _HAVE_PROC_FD else None,
            )
        except BaseException:
            job.discard()
            raise

    def _finish_get(self, item: _PullItem, t: Transfer, notify: Callable[[Transfer], None]) -> Any:
        job: _GetJob = t.context
        if job.progress is not None:
            job.progress.settle()
            self.large_jobs.pop(id(job), None)
        try:
            if t.error is not None:
                if isinstance(t.error, CrtCancelled):
                    raise _Interrupted()
                raise t.error
            h = t.headers
            st = os.fstat(job.fd)
            length = int(h.get("content-length", st.st_size))
            if st.st_size != length:
                raise _ShortRead(f"received {st.st_size} bytes but the object has {length}")
            return self._complete_get(item, job, h, length, st)
        except (ConnectionError, _ShortRead) as exc:
            job.discard()
            if job.attempt >= _STREAM_ATTEMPTS or self.runner.cancel_event.is_set():
                raise
            log.info("retrying download of %s after: %s", item.key, exc)
            return self._get(item, notify, job.attempt + 1)
        except BaseException:
            job.discard()
            raise

    def _complete_get(
        self, item: _PullItem, job: _GetJob, h: dict, length: int, st: os.stat_result
    ) -> _Done | None:
        meta = {k[11:]: v for k, v in h.items() if k.startswith("x-amz-meta-")}
        etag = _etag(h.get("etag")) or item.etag
        if META_SYMLINK in meta:
            job.discard()
            tree = self.tree
            head, _, name = item.rel.rpartition("/")
            tmpname = _new_tmp_name()
            tmp = f"{head}/{tmpname}" if head else tmpname
            target = _decode_target(meta[META_SYMLINK])
            with tree.dir(head) as dfd:
                # a symlink is only ever created (and its time set) as a link, never used
                os.symlink(target, tmpname, dir_fd=dfd)
                try:
                    mtime = _parse_mtime(meta.get(META_MTIME))
                    if mtime is not None:
                        os.utime(tmpname, ns=(mtime, mtime), dir_fd=dfd, follow_symlinks=False)
                    self._place(tmp, item)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmpname, dir_fd=dfd)
                    raise
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            return _Done(item.key, _entry_from_stat("l", length, etag, st, target), True, 0)
        fd = job.fd
        mode = _parse_mode(meta.get(META_MODE))
        if mode is not None and (mode & 0o777) != (st.st_mode & 0o7777):
            os.fchmod(fd, mode & 0o777)  # never setuid/setgid
        mtime = _parse_mtime(meta.get(META_MTIME))
        if mtime is None and h.get("last-modified"):
            with contextlib.suppress(TypeError, ValueError, OverflowError):
                lm = email.utils.parsedate_to_datetime(h["last-modified"])
                mtime = int(Decimal(str(lm.timestamp())) * 1_000_000_000)
        if mtime is not None:
            os.utime(fd, ns=(mtime, mtime))
        st = os.fstat(fd)
        job.fd = -1
        os.close(fd)
        self._add_pending(item, job.tmp, length, etag, st, seeded=False)
        return None

    # -- seeding from another local copy -------------------------------------

    def _try_seed(self, item: _PullItem) -> bool:
        """Copy the file from ``seed_from`` if it is known to hold this object's bytes."""
        e = self.seed_entries.get(item.key)
        if (
            e is None
            or e.get("t") != "f"
            or e.get("etag") != item.etag
            or e.get("size") != item.size
        ):
            return False
        seed, rel = self.seed_tree, item.rel
        assert seed is not None
        try:
            if not _local_matches(e, seed.lstat(rel), seed, rel):
                return False
            sfd = seed.open(rel, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            return False
        tmp = ""
        dfd = -1
        try:
            st = os.fstat(sfd)
            if not _local_matches(e, st, seed, rel):
                return False
            tmp, dfd = self._open_tmp(rel)
            _copy_fd(sfd, dfd, item.size, self.runner.cancel_event)
            after = os.fstat(sfd)
            if (after.st_size, after.st_mtime_ns, after.st_ino) != (
                st.st_size,
                st.st_mtime_ns,
                st.st_ino,
            ) or os.fstat(dfd).st_size != item.size:
                raise _Changed("the seed copy changed while it was copied")
            os.fchmod(dfd, e["mode"] & 0o777)
            os.utime(dfd, ns=(e["mtime_ns"], e["mtime_ns"]))
            dst_st = os.fstat(dfd)
            os.close(dfd)
            dfd = -1
        except BaseException as exc:
            if dfd >= 0:
                os.close(dfd)
                with contextlib.suppress(OSError):
                    self.tree.unlink(tmp)
            if isinstance(exc, _Interrupted) or _map_error(exc, self.ctx, "copying") is not None:
                raise
            if isinstance(exc, Exception):
                log.info("not seeding '%s' from %s: %s", item.rel, self.seed_root, exc)
                return False
            raise
        finally:
            os.close(sfd)
        self._add_pending(item, tmp, item.size, item.etag, dst_st, seeded=True)
        return True

    # -- durability batches --------------------------------------------------

    def _add_pending(
        self, item: _PullItem, tmp: str, size: int, etag: str, st: os.stat_result, *, seeded: bool
    ) -> None:
        if not self.pending:
            self.pending_since = time.monotonic()
        self.pending.append(_Pending(item, tmp, size, etag, st, seeded))
        self.pending_bytes += size

    def _maybe_flush(self, final: bool) -> None:
        now = time.monotonic()
        if self.large_jobs and not final and now - self.last_writeback >= 0.25:
            self.last_writeback = now
            for job in list(self.large_jobs.values()):
                if job.fd >= 0:
                    with contextlib.suppress(OSError):
                        _start_writeback(job.fd)
        if self.syncing is not None and (final or self.syncing[0].done()):
            fut, batch = self.syncing
            self.syncing = None
            self._place_batch(batch, fut)
        if not self.pending or self.syncing is not None:
            return
        if (
            final
            or len(self.pending) >= _FLUSH_FILES
            or self.pending_bytes >= _FLUSH_BYTES
            or now - self.pending_since >= _FLUSH_SECONDS
        ):
            batch, self.pending, self.pending_bytes = self.pending, [], 0
            if self.durable_pool is None:
                self.durable_pool = ThreadPoolExecutor(1, thread_name_prefix="ainb-sync-durable")
            # fsync in the background: the downloads go on meanwhile
            by_dev: dict[int, list[str]] = {}
            for p in batch:
                by_dev.setdefault(p.st.st_dev, []).append(p.tmp)
            fut = self.durable_pool.submit(_make_durable, self.tree, by_dev)
            if final:
                self._place_batch(batch, fut)
            else:
                self.syncing = (fut, batch)

    def _place_batch(self, batch: list[_Pending], durable: Future) -> None:
        """Rename a batch of temporary files into place once they are durable."""
        runner, stats = self.runner, self.runner.stats
        try:
            durable.result()
        except Exception as exc:
            for p in batch:
                with contextlib.suppress(OSError):
                    self.tree.unlink(p.tmp)
                runner.record_error(p.item.rel, exc)
            return
        for p in batch:
            item = p.item
            try:
                self._place(p.tmp, item)
            except Exception as exc:
                with contextlib.suppress(OSError):
                    self.tree.unlink(p.tmp)
                runner.record_error(item.rel, exc)
                continue
            self.renamed_dirs.setdefault(p.st.st_dev, set()).add(os.path.dirname(p.tmp))
            if p.seeded:
                stats.files_seeded += 1
            entry = _entry_from_stat("f", p.size, p.etag, p.st, None)
            self._on_done(item, _Done(item.key, entry, True, p.size))

    def _discard_pending(self) -> None:
        if self.syncing is not None:
            fut, batch = self.syncing
            self.syncing = None
            with contextlib.suppress(Exception):
                fut.result()
            self.pending.extend(batch)
        if self.durable_pool is not None:
            self.durable_pool.shutdown(wait=True)
            self.durable_pool = None
        for p in self.pending:
            with contextlib.suppress(OSError):
                self.tree.unlink(p.tmp)
        self.pending = []
        self.pending_bytes = 0

    def _pull_marker(self, item: _PullItem) -> _Done:
        """Worker thread: apply a directory marker's metadata (HEAD through boto3)."""
        if self.runner.cancel_event.is_set():
            raise _Interrupted()
        head = self.ctx.s3.head_object(Bucket=self.ctx.bucket, Key=item.key)
        meta = head.get("Metadata") or {}
        mode = _parse_mode(meta.get(META_MODE))
        mtime = _parse_mtime(meta.get(META_MTIME))
        # _ensure_dir made it a real directory; O_NOFOLLOW|O_DIRECTORY makes sure
        fd = self.tree.opendir(item.rel)
        try:
            if mode is not None:
                os.fchmod(fd, mode & 0o1777)  # never setuid/setgid
            if mtime is not None:
                os.utime(fd, ns=(mtime, mtime))
            st = os.fstat(fd)
        finally:
            os.close(fd)
        entry = _entry_from_stat("d", item.size, _etag(head.get("ETag")) or item.etag, st, None)
        return _Done(item.key, entry, True, 0)
