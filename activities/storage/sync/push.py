"""Pushing a local directory to ``s3://bucket/prefix``: :class:`_Pusher`.

The top of the push's class chain: opens ``local_dir``, refuses ``delete=True``
after an incomplete pull, loads both manifests, scans the tree and lists the prefix,
decides per entry by a three-way comparison (local entry, object, last sync's record)
whether to skip, keep, upload, check first or preserve the stored version, runs the
checks and uploads, then the delete pass, and saves the manifests.
"""

from __future__ import annotations

import logging

from activities.storage.beneath import Tree
from activities.storage.errors import StorageError
from activities.storage.sync.common import _depth, _is_excluded, _parents
from activities.storage.sync.constants import _MAX_KEY_BYTES
from activities.storage.sync.manifest import _Manifest
from activities.storage.sync.push_remote import _PushItem
from activities.storage.sync.push_upload import _PushUpload
from activities.storage.sync.runner import _Done, _list_remote
from activities.storage.sync.scan import (
    _implied_dirs,
    _LocalEntry,
    _same_version,
    _scan_local,
    _version,
)
from activities.storage.sync.stats import SyncStats

log = logging.getLogger(__name__)


class _Pusher(_PushUpload):
    """One push (see :func:`activities.storage.sync.push`)."""

    def run(self) -> SyncStats:
        try:
            return self._run_opened()
        finally:
            if self._tree is not None:
                self._tree.close()

    def _run_opened(self) -> SyncStats:
        ctx = self.ctx
        try:
            # the one use of local_dir's path: everything below goes through this fd
            self._tree = Tree(self.rootp)
        except NotADirectoryError:
            pass
        except OSError as exc:
            raise StorageError(
                f"Cannot push {ctx.local_dir} to {ctx.where}: the local directory cannot be "
                f"read ({exc.strerror}). Nothing was uploaded or deleted.",
                bucket=ctx.bucket,
                prefix=ctx.prefix,
            ) from exc
        if self._tree is None:
            raise StorageError(
                f"Cannot push {ctx.local_dir} to {ctx.where}: it is not a directory. Nothing "
                "was uploaded or deleted.",
                bucket=ctx.bucket,
                prefix=ctx.prefix,
            )
        if self.delete:
            self._check_pull_completed()
        self.manifest = _Manifest.load(ctx, "push")
        self.pull_manifest = _Manifest.load(ctx, "pull")
        self.known = self._known_records()
        self.synced_before = self.manifest.found or self.pull_manifest.found
        self.runner.set_saver(self._save)
        try:
            self._run()
        finally:
            try:
                self.runner.close()
            finally:
                self._save()
        return self.runner.finish("push")

    def _known_records(self) -> dict[str, dict]:
        """What this directory knew of the prefix before this push, by key: the state
        both sides shared at the last sync (see _plan and _delete_remote).

        The push manifest's entry where there is one, else the pull manifest's; with
        the LastModified a pull recorded for that same version."""
        known = dict(self.pull_manifest.entries)
        for key, entry in self.manifest.entries.items():
            pulled = known.get(key)
            if pulled is not None and "lm" in pulled and _same_version(entry, _version(pulled)):
                entry = {**entry, "lm": pulled["lm"]}
            known[key] = entry
        return known

    def _save(self) -> None:
        self.manifest.complete = not (self.runner.stopping or self.runner.failures)
        self.manifest.save()
        if self.pull_manifest.found:  # keeps its own "complete" flag; never created here
            self.pull_manifest.save()

    def _check_pull_completed(self) -> None:
        ctx = self.ctx
        data = _Manifest.read_raw(ctx.manifest_path("pull"))
        if (
            data is not None
            and data.get("bucket") == ctx.bucket
            and data.get("prefix") == ctx.prefix
            and not data.get("complete")
        ):
            raise StorageError(
                f"Refusing to push {ctx.local_dir} to {ctx.where} with delete=True: the last "
                f"pull of {ctx.where} into this directory did not finish, so files missing "
                "locally would be deleted from storage. Pull again first (or push with "
                "delete=False). Nothing was uploaded or deleted.",
                bucket=ctx.bucket,
                prefix=ctx.prefix,
            )

    def _run(self) -> None:
        ctx, runner, stats = self.ctx, self.runner, self.runner.stats
        try:
            local, errors, _tmp = _scan_local(self.tree, self.excludes)
        except OSError as exc:
            raise StorageError(
                f"Cannot push {ctx.local_dir} to {ctx.where}: cannot read the local directory "
                f"({exc.strerror}). Nothing was uploaded or deleted.",
                bucket=ctx.bucket,
                prefix=ctx.prefix,
            ) from exc
        error_dirs = set()
        for rel, msg in errors:
            runner.fail(rel, msg)
            error_dirs.add(rel)

        # what should exist remotely: files, symlinks, markers for empty directories
        wanted: dict[str, _LocalEntry] = {}
        covered: set[str] = set(error_dirs)
        for e in local.values():
            if e.kind != "d":
                wanted[ctx.kp + e.rel] = e
                covered.update(_parents(e.rel))
        for e in sorted(
            (e for e in local.values() if e.kind == "d"), key=lambda e: _depth(e.rel), reverse=True
        ):
            if e.rel not in covered:
                wanted[ctx.kp + e.rel + "/"] = e
            covered.update(_parents(e.rel))
        for key in list(wanted):
            problem = None
            try:
                if len(key.encode("utf-8")) > _MAX_KEY_BYTES:
                    problem = "the path is too long for an S3 key (more than 1024 bytes)"
            except UnicodeEncodeError:
                problem = "the file name is not valid UTF-8 and cannot be stored as an S3 key"
            if problem:
                runner.fail(wanted.pop(key).rel, problem)

        stats.files_total = len(wanted) + len(runner.failures)
        stats.bytes_total = sum(e.size for e in wanted.values() if e.kind == "f")

        listing = _list_remote(ctx, runner, "listing")
        if runner.stopping:
            return

        heads: list[_PushItem] = []
        self.uploads: list[_PushItem] = []
        for key in sorted(wanted):
            e = wanted[key]
            remote = listing.get(key)
            action = self._plan(key, e, remote)
            if action in ("skip", "keep"):
                stats.files_skipped += 1
                if action == "skip":
                    self._record_unchanged(key)
                else:
                    self.kept.append(e.rel)
                continue
            item = self._item(key, e, remote, listing, action)
            (heads if item.head_first or item.preserve else self.uploads).append(item)
        for key in [k for k in self.manifest.entries if k not in wanted]:
            rel = key[len(ctx.kp) :].rstrip("/")
            if not _is_excluded(rel, self.excludes):
                del self.manifest.entries[key]
        runner.report()

        # the object may already hold this file (compare its metadata), or holds someone
        # else's version that must be copied aside first
        runner.run_pool(heads, self._check_head, self._on_head_done)
        self.uploads.sort(key=lambda i: i.key)
        runner.run_async(self.uploads, self._start_put, self._finish_put, self._on_done)
        self._log_outcome()

        if self.delete and not runner.stopping:
            self._delete_remote(listing, wanted)

    def _plan(self, key: str, e: _LocalEntry, remote: tuple[int, str, str] | None) -> str:
        """Decide what to do with one local entry: "skip", "keep", "put", "check" or
        "conflict".

        Three-way comparison between the local entry, the listed object and what the
        last sync recorded of both (``self.known``):

        * both unchanged                    -> skip
        * only the object changed, or it    -> keep: someone else's newer write (or
          was deleted                          deletion) stays; the next pull brings it
        * only the local entry changed      -> put
        * both changed                      -> conflict: the stored version is copied to
                                               the preserved area, then replaced
        * no record of the key: nothing stored -> put; an object this directory never
          saw although it synced with the prefix before is someone else's new write
          -> conflict (unless it already holds this very file); with no record of the
          prefix at all (a first push) there is no "since" -> put, as it always did

        Directory markers hold no data: they are put, never preserved.  A symlink's
        object is empty whatever its target (the same ETag; LastModified to the second
        at best): one that looks unchanged is checked ("link") before it is replaced.
        """
        known = self.known.get(key)
        if known is None:
            if remote is None:
                return "put"
            if e.kind == "d" or not self.synced_before:
                return "check" if remote[0] == e.size else "put"
            return "conflict"
        if self._local_unchanged(known, e):
            return "skip" if remote is not None and _same_version(known, remote) else "keep"
        if remote is None or e.kind == "d":
            return "put"
        if _same_version(known, remote):
            return "link" if known.get("t") == "l" else "put"
        return "conflict"

    def _item(
        self,
        key: str,
        e: _LocalEntry,
        remote: tuple[int, str, str] | None,
        listing: dict[str, tuple[int, str, str]],
        action: str,
    ) -> _PushItem:
        item = _PushItem(key, e.rel, e, remote)
        if action == "check":
            item.head_first = True
        elif action == "conflict":
            assert remote is not None
            # same size: perhaps this file after all (a push whose record was lost)
            item.head_first = remote[0] == e.size
            item.preserve = True
        elif action == "link":
            item.preserve = True
            item.linked = self.known[key]
        if e.kind == "d":
            return item  # a marker replaces nothing worth a condition
        if remote is not None:
            item.expect = remote[1]
        else:
            if self._implied is None:
                self._implied = _implied_dirs(listing)
            # some servers (SeaweedFS) count a key with objects below it as existing
            # (a directory) and would refuse every upload of it
            item.expect = None if key in self._implied else "*"
        return item

    def _record_unchanged(self, key: str) -> None:
        m = self.manifest.entries.get(key)
        if m is None:  # known from the pull manifest only: the next push knows it too
            m = {k: v for k, v in self.known[key].items() if k != "lm"}
            self.manifest.entries[key] = m
        self._seed_pull_manifest(key, m)

    def _log_outcome(self) -> None:
        ctx = self.ctx
        if self.kept:
            log.warning(
                "push %s -> %s: left %d object(s) as they are in storage: changed or deleted "
                "there since the last sync while the local copy did not change (the next "
                "pull brings the change here), e.g. '%s'",
                ctx.local_dir,
                ctx.where,
                len(self.kept),
                self.kept[0],
            )
        if self.preserved:
            log.warning(
                "push %s -> %s: %d file(s) changed both here and in storage: the stored "
                "version was copied to %s before the local one replaced it, e.g. '%s'",
                ctx.local_dir,
                ctx.where,
                len(self.preserved),
                f"s3://{ctx.bucket}/{self.preserve_prefix}",
                self.preserved[0],
            )

    @staticmethod
    def _local_unchanged(m: dict, e: _LocalEntry) -> bool:
        """Is the local entry still what the record ``m`` describes?"""
        if m.get("t") != e.kind or m.get("mtime_ns") != e.mtime_ns:
            return False
        if e.kind == "f":
            return m.get("size") == e.size and m.get("mode") == e.mode
        if e.kind == "l":
            return m.get("target") == e.target
        return m.get("mode") == e.mode

    def _on_done(self, item: _PushItem, done: _Done | None) -> None:
        stats = self.runner.stats
        if done is None:  # vanished locally: leave the remote object alone this time
            self.protected.add(item.key)
            stats.files_skipped += 1
            return
        if done.transferred:
            stats.files_done += 1
            stats.bytes_done += done.nbytes
        else:
            stats.files_skipped += 1
        if done.entry is not None:
            self.manifest.entries[done.key] = done.entry
            self._seed_pull_manifest(done.key, done.entry)
        else:
            self.manifest.entries.pop(done.key, None)
            self.pull_manifest.entries.pop(done.key, None)
        self.runner.mark_dirty()

    def _seed_pull_manifest(self, key: str, entry: dict) -> None:
        """The local file now equals the object: the next pull can skip it."""
        if not self.pull_manifest.found:
            return
        old = self.pull_manifest.entries.get(key)
        if old is not None and all(old.get(k) == v for k, v in entry.items()):
            return  # keep its "lm"
        self.pull_manifest.entries[key] = dict(entry)

    def _on_head_done(self, item: _PushItem, done: _Done | None) -> None:
        if done is not None and done.nbytes == -1:
            self.uploads.append(item)
        else:
            self._on_done(item, done)
