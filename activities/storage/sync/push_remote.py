"""The requests a push makes about stored objects, other than uploads.

:class:`_PushRemote` is the bottom of the push's class chain (``_PushRemote`` <-
:class:`~activities.storage.sync.push_upload._PushUpload` <-
:class:`~activities.storage.sync.push._Pusher`): the state of one push, checking by
HEAD whether an object already holds a local file or a symlink's target changed,
copying the stored version into ``prefix/.ainb-preserved/`` before it is replaced,
and the delete pass (only objects this directory knew as they are).
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass

from botocore.exceptions import ClientError

from activities.storage.beneath import Tree
from activities.storage.sync.common import (
    _Ctx,
    _decode_target,
    _etag,
    _FileProblem,
    _Interrupted,
    _is_excluded,
    _parse_mode,
    _parse_mtime,
)
from activities.storage.sync.constants import (
    _DELETE_BATCH,
    _MAX_COPY_BYTES,
    _MAX_KEY_BYTES,
    META_MODE,
    META_MTIME,
    META_SYMLINK,
    PRESERVED_AREA,
)
from activities.storage.sync.error_map import _changed_remotely, _condition_refused, _delete_keys
from activities.storage.sync.manifest import _Manifest
from activities.storage.sync.runner import _Done, _Runner
from activities.storage.sync.scan import _entry_from_stat, _LocalEntry, _same_version

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _PushItem:
    key: str
    rel: str
    local: _LocalEntry
    remote: tuple[int, str, str] | None  # as listed: (size, etag, last-modified)
    head_first: bool = False  # the object may already hold this file: compare metadata
    preserve: bool = False  # copy the stored version aside before replacing it
    #: a symlink's object looks unchanged: preserve it only if its target is not this
    linked: dict | None = None
    #: upload only over this version: an ETag (If-Match), "*" for "none" (If-None-Match),
    #: None for no condition
    expect: str | None = None


class _PushRemote:
    """State of one push; HEAD checks, preserving stored versions, remote deletes."""

    # set by _Pusher._run_opened() and _Pusher._run() before anything below runs
    manifest: _Manifest
    pull_manifest: _Manifest
    known: dict[str, dict]
    synced_before: bool
    uploads: list[_PushItem]

    def __init__(self, ctx, delete, excludes, progress, should_stop, workers) -> None:
        self.ctx: _Ctx = ctx
        self.rootp = os.fspath(ctx.local_dir)
        self.delete = delete
        self.excludes: tuple[str, ...] = excludes
        self.runner = _Runner(ctx, progress, should_stop, workers, "uploading to")
        self.protected: set[str] = set()  # keys that must not be deleted remotely
        self._tree: Tree | None = None  # local_dir, opened once by run()
        # cleared if the server rejects conditional uploads (then sent without them)
        self.conditional = True
        self.kept: list[str] = []  # changed or deleted in storage only: left as they are
        self.preserved: list[str] = []  # stored versions copied aside before replacing
        self._preserved_lock = threading.Lock()
        stamp = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(3)}"
        self.preserve_prefix = f"{ctx.kp}{PRESERVED_AREA}/{stamp}/"
        self._implied: set[str] | None = None  # directories implied by the listing

    @property
    def tree(self) -> Tree:
        """local_dir as opened by run(); nothing touches the tree before that."""
        if self._tree is None:
            raise RuntimeError("the local tree is used before run() opened it")
        return self._tree

    def _check_head(self, item: _PushItem) -> _Done | None:
        """Worker thread: a _Done if the remote object already holds this file; else
        (after preserving the stored version, if asked) a _Done meaning "upload it"."""
        if self.runner.cancel_event.is_set():
            raise _Interrupted()
        if item.head_first:
            done = self._same_by_metadata(item)
            if done is not None:
                return done
            item.head_first = False
        if item.preserve and (item.linked is None or self._retargeted(item.key, item.linked)):
            self._preserve_remote(item)
        return _Done(item.key, None, False, -1)  # "upload it"

    def _retargeted(self, key: str, known: dict) -> bool:
        """Does the stored symlink ``key`` point elsewhere than ``known`` recorded?"""
        ctx = self.ctx
        try:
            head = ctx.s3.head_object(Bucket=ctx.bucket, Key=key)
        except ClientError as exc:
            if (exc.response.get("Error") or {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False  # gone: nothing left to keep
            raise
        stored = (head.get("Metadata") or {}).get(META_SYMLINK)
        return stored is None or _decode_target(stored) != known.get("target")

    def _preserve_remote(self, item: _PushItem) -> None:
        """Worker thread: copy the stored version of ``item`` (the one listed) into the
        preserved area, so the other writer's version survives the upload."""
        assert item.remote is not None
        size, etag, _lm = item.remote
        dest = f"{self.preserve_prefix}{item.rel}"
        if len(dest.encode("utf-8")) > _MAX_KEY_BYTES:
            raise _FileProblem(
                "changed both here and in storage, and the path is too long for a preserved "
                "copy of the stored version: not uploaded, the stored version stays"
            )
        # only the version the plan was made for (a newer one means someone is writing);
        # without the condition if the server does not support it: the copy is then of
        # the version the upload replaces, which is what must survive
        for condition in ({"CopySourceIfMatch": f'"{etag}"'}, {}):
            try:
                self._copy_object(item.key, dest, size, condition)
                break
            except ClientError as exc:
                code = (exc.response.get("Error") or {}).get("Code")
                if code in ("NoSuchKey", "404", "NotFound"):
                    item.expect = None  # deleted since the listing: nothing to preserve
                    return
                refused = _condition_refused(exc)
                if refused == "failed":
                    raise _FileProblem(_changed_remotely(item.rel)) from None
                if refused != "unsupported" or not condition:
                    raise
        with self._preserved_lock:
            self.preserved.append(item.rel)

    def _copy_object(self, key: str, dest: str, size: int, extra: dict[str, str]) -> None:
        """Copy ``key`` to ``dest`` inside the bucket (server side), metadata included."""
        ctx = self.ctx
        source = {"Bucket": ctx.bucket, "Key": key}
        if size > _MAX_COPY_BYTES:  # a multipart copy (s3transfer)
            ctx.s3.copy(source, ctx.bucket, dest, ExtraArgs=extra)
        else:
            ctx.s3.copy_object(
                Bucket=ctx.bucket, Key=dest, CopySource=source, MetadataDirective="COPY", **extra
            )

    def _same_by_metadata(self, item: _PushItem) -> _Done | None:
        """No manifest entry: does the remote object already hold this file?"""
        ctx, e = self.ctx, item.local
        try:
            head = ctx.s3.head_object(Bucket=ctx.bucket, Key=item.key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        meta = head.get("Metadata") or {}
        if int(head.get("ContentLength", -1)) != e.size:
            return None
        if _parse_mtime(meta.get(META_MTIME)) != e.mtime_ns:
            return None
        if e.kind == "l":
            if META_SYMLINK not in meta or _decode_target(meta[META_SYMLINK]) != e.target:
                return None
        else:
            if META_SYMLINK in meta or _parse_mode(meta.get(META_MODE)) != e.mode:
                return None
        st = self.tree.lstat(e.rel)
        if st is None or st.st_mtime_ns != e.mtime_ns or (e.kind == "f" and st.st_size != e.size):
            return None
        entry = _entry_from_stat(e.kind, e.size, _etag(head.get("ETag")), st, e.target)
        return _Done(item.key, entry, False, 0)

    # -- delete -------------------------------------------------------------

    def _link_kept(self, key: str, known: dict) -> bool:
        """A symlink deleted here: keep its object if someone gave it a new target."""
        try:
            return self._retargeted(key, known)
        except Exception as exc:
            self.runner.record_error(key[len(self.ctx.kp) :], exc)
            return True

    def _delete_remote(self, listing: dict[str, tuple[int, str, str]], wanted: dict) -> None:
        ctx, runner = self.ctx, self.runner
        if runner.failures:
            log.warning(
                "push %s -> %s: not deleting remote objects because %d file(s) failed",
                ctx.local_dir,
                ctx.where,
                len(runner.failures),
            )
            return
        doomed = []
        for key in sorted(listing):
            if key in wanted or key in self.protected:
                continue
            known = self.known.get(key)
            if known is None or not _same_version(known, listing[key]):
                # New or changed in storage since this directory last synced with it:
                # someone else's data, not a deletion made here. Keep it.
                continue
            rel = key[len(ctx.kp) :]
            if not rel or _is_excluded(rel.rstrip("/"), self.excludes):
                continue
            if known.get("t") == "l" and self._link_kept(key, known):
                continue
            doomed.append(key)
        if runner.failures:
            return  # a stored symlink could not be checked: delete nothing this time
        for i in range(0, len(doomed), _DELETE_BATCH):
            if runner.stopping or runner.poll_stop():
                return
            batch = doomed[i : i + _DELETE_BATCH]
            try:
                failed = _delete_keys(ctx, batch, "deleting from")
            except Exception as exc:
                runner.record_error(batch[0][len(ctx.kp) :], exc)
                return
            for key in batch:
                if key in failed:
                    code, message = failed[key]
                    runner.fail(
                        key[len(ctx.kp) :],
                        f"could not delete the remote object: {code}: {message}",
                    )
                else:
                    runner.stats.files_deleted += 1
                    self.manifest.entries.pop(key, None)
                    self.pull_manifest.entries.pop(key, None)
            runner.tick()
