"""The uploads of a push: one CRT PUT per file, symlink or directory marker.

:class:`_PushUpload` opens each file beneath the tree (never through a symlink),
uploads small files from memory with Content-MD5 and streams large ones from the
opened descriptor, detects files changed during the upload (retrying a few times),
and makes uploads conditional on the listed version (``If-Match`` /
``If-None-Match``), dropping the conditions if the server does not implement them.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from activities.storage.beneath import swapped
from activities.storage.crt_engine import CrtCancelled, Transfer
from activities.storage.sync.common import (
    _Changed,
    _encode_target,
    _etag,
    _FileProblem,
    _format_mode,
    _format_mtime,
    _Interrupted,
)
from activities.storage.sync.constants import (
    _CHANGE_ATTEMPTS,
    _HAVE_PROC_FD,
    _PROC_FD,
    DIRECTORY_CONTENT_TYPE,
    IN_MEMORY_UPLOAD_LIMIT,
    META_MODE,
    META_MTIME,
    META_SYMLINK,
    MULTIPART_THRESHOLD,
)
from activities.storage.sync.error_map import _changed_remotely, _condition_refused
from activities.storage.sync.push_remote import _PushItem, _PushRemote
from activities.storage.sync.runner import _Done, _Progress
from activities.storage.sync.scan import _entry_from_stat, _LocalEntry

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _PutJob:
    """One upload: the open file (or -1), its stat before the upload, the attempt."""

    fd: int
    st: os.stat_result
    attempt: int
    progress: _Progress | None
    target: str | None  # symlinks
    conditional: bool = False  # sent with If-Match / If-None-Match


def _meta_headers(meta: dict[str, str]) -> list[tuple[str, str]]:
    return [(f"x-amz-meta-{k}", v) for k, v in meta.items()]


class _PushUpload(_PushRemote):
    """Uploading local entries, conditionally on the version the plan was made for."""

    def _metadata(self, e: _LocalEntry, st: os.stat_result | None = None) -> dict[str, str]:
        mtime = st.st_mtime_ns if st is not None else e.mtime_ns
        if e.kind == "l":
            return {META_MTIME: _format_mtime(mtime), META_SYMLINK: _encode_target(e.target or "")}
        mode = st.st_mode if st is not None else e.mode
        return {META_MODE: _format_mode(mode), META_MTIME: _format_mtime(mtime)}

    def _start_put(self, item: _PushItem, notify: Callable[[Transfer], None]) -> Any:
        if self.runner.cancel_event.is_set():
            raise _Interrupted()
        ctx, e = self.ctx, item.local
        eng = self.runner.engine
        if e.kind == "f":
            return self._start_put_file(item, notify, 1)
        try:
            with self.tree.parent(e.rel) as (dfd, name):
                try:
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                except FileNotFoundError:
                    return None
                if e.kind == "l" and stat.S_ISLNK(st.st_mode):
                    target = os.readlink(name, dir_fd=dfd)
        except OSError as exc:
            if swapped(exc):
                raise _Changed(
                    f"'{e.rel}' (or a directory above it) was replaced during the push"
                ) from None
            raise
        if e.kind == "l":
            if not stat.S_ISLNK(st.st_mode):
                raise _Changed(f"'{e.rel}' is no longer a symlink")
            e = dataclasses.replace(e, target=target, mtime_ns=st.st_mtime_ns)
            condition = self._condition(item)
            job = _PutJob(-1, st, 1, None, target, bool(condition))
            return eng.put(
                ctx.bucket, item.key, [*_meta_headers(self._metadata(e, st)), *condition],
                notify, size=0, body=b"", context=job,
            )  # fmt: skip
        # directory marker
        if not stat.S_ISDIR(st.st_mode):
            raise _Changed(f"'{e.rel}' is no longer a directory")
        headers = [*_meta_headers(self._metadata(e, st)), ("Content-Type", DIRECTORY_CONTENT_TYPE)]
        job = _PutJob(-1, st, 1, None, None)
        return eng.put(ctx.bucket, item.key, headers, notify, size=0, body=b"", context=job)

    def _start_put_file(
        self, item: _PushItem, notify: Callable[[Transfer], None], attempt: int
    ) -> Transfer | None:
        ctx = self.ctx
        try:
            # beneath the root, no symlink in any component (the file or a directory above
            # it swapped for a symlink since the scan: ELOOP, or ENOTDIR for a file)
            fd = self.tree.open(item.rel, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if swapped(exc):  # became a symlink since the scan: this file fails
                raise _Changed(
                    f"'{item.rel}' (or a directory above it) was replaced by a symlink during "
                    "the push"
                ) from None
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _Changed(f"'{item.rel}' is no longer a regular file")
            size = st.st_size
            condition = self._condition(item)
            headers = [*_meta_headers(self._metadata(item.local, st)), *condition]
            progress = _Progress(self.runner) if size >= MULTIPART_THRESHOLD else None
            source: dict[str, Any]
            if size <= IN_MEMORY_UPLOAD_LIMIT:
                data = os.read(fd, size + 1) if size else b""
                if not self._same_stat(st, os.fstat(fd)) or len(data) != size:
                    raise _Changed(f"'{item.rel}' changed while it was being read")
                md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
                headers.append(("Content-MD5", md5))
                os.close(fd)
                fd = -1
                source = {"body": data}
            elif not _HAVE_PROC_FD:
                # no /proc/self/fd: the CRT reads our descriptor as a stream (never a path)
                source = {"body_fd": fd}
            else:
                # stream from the file we opened (never re-resolve the path: it could be a
                # symlink by now); the CRT reads /proc/self/fd/N, i.e. this very inode
                source = {"send_filepath": f"{_PROC_FD}/{fd}"}
            job = _PutJob(fd, st, attempt, progress, None, bool(condition))
            return self.runner.engine.put(
                ctx.bucket,
                item.key,
                headers,
                notify,
                size=size,
                context=job,
                on_progress=progress,
                **source,
            )
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise

    def _finish_put(self, item: _PushItem, t: Transfer, notify: Callable[[Transfer], None]) -> Any:
        job: _PutJob = t.context
        e = item.local
        if job.progress is not None:
            job.progress.settle()
        if e.kind != "f":
            if t.error is not None:
                if isinstance(t.error, CrtCancelled):
                    raise _Interrupted()
                if job.conditional and _condition_refused(t.error):
                    done = self._refused(item, t.error)
                    return done if done is not None else self._start_put(item, notify)
                raise t.error
            etag = _etag(t.headers.get("etag"))
            return _Done(item.key, _entry_from_stat(e.kind, 0, etag, job.st, job.target), True, 0)
        changed = False
        try:
            if job.fd >= 0:
                changed = not self._same_stat(job.st, os.fstat(job.fd))
            else:
                try:
                    now = self.tree.lstat(item.rel)
                except OSError as exc:
                    if not swapped(exc):
                        raise
                    now = None  # a directory above it swapped for a symlink
                changed = now is None or not self._same_stat(job.st, now)
        finally:
            if job.fd >= 0:
                os.close(job.fd)
                job.fd = -1
        if t.error is not None and isinstance(t.error, CrtCancelled):
            raise _Interrupted()
        if t.error is not None and job.conditional and _condition_refused(t.error):
            done = self._refused(item, t.error)
            return done if done is not None else self._start_put_file(item, notify, job.attempt)
        if changed:
            # a file modified mid-upload can make the server reject the body (e.g. a
            # Content-MD5 mismatch): report that, not the symptom
            if job.attempt >= _CHANGE_ATTEMPTS or self.runner.cancel_event.is_set():
                raise _Changed(f"'{item.rel}' changed while it was being uploaded")
            if t.error is None and item.expect is not None:
                # stored anyway: the next attempt replaces our own upload
                item.expect = _etag(t.headers.get("etag")) or None
            return self._start_put_file(item, notify, job.attempt + 1)
        if t.error is not None:
            raise t.error
        size = job.st.st_size
        etag = _etag(t.headers.get("etag"))
        if not etag:  # (the CRT reports the CompleteMultipartUpload ETag as a header)
            ctx = self.ctx
            head = ctx.s3.head_object(Bucket=ctx.bucket, Key=item.key)
            if int(head.get("ContentLength", -1)) != size:
                raise _FileProblem(
                    f"after upload the object has {head.get('ContentLength')} bytes "
                    f"instead of {size}"
                )
            etag = _etag(head.get("ETag"))
        entry = _entry_from_stat("f", size, etag, job.st, None)
        return _Done(item.key, entry, True, size)

    def _condition(self, item: _PushItem) -> list[tuple[str, str]]:
        """Headers that make the upload replace only the version the plan was made for
        (a write by someone else since the listing makes it fail instead)."""
        if not self.conditional or item.expect is None:
            return []
        if item.expect == "*":
            return [("If-None-Match", "*")]
        return [("If-Match", f'"{item.expect}"')]

    def _refused(self, item: _PushItem, error: BaseException) -> _Done | None:
        """A conditional upload failed with ``error``: None to send it again without
        conditions (the server does not implement them), a _Done if the object turns
        out to hold this very file already (a retried request that had succeeded);
        otherwise the file fails, the stored version untouched."""
        if _condition_refused(error) == "unsupported":
            if self.conditional:
                self.conditional = False
                log.warning(
                    "push %s -> %s: %s does not support conditional uploads; uploading "
                    "without them (a write by someone else during this push can be lost)",
                    self.ctx.local_dir,
                    self.ctx.where,
                    self.ctx.endpoint,
                )
            return None
        done = self._same_by_metadata(item)
        if done is not None:
            return done
        raise _FileProblem(_changed_remotely(item.rel))

    @staticmethod
    def _same_stat(a: os.stat_result, b: os.stat_result) -> bool:
        return (a.st_size, a.st_mtime_ns, a.st_ino) == (b.st_size, b.st_mtime_ns, b.st_ino)
