"""Pulling ``s3://bucket/prefix`` into a local directory: :class:`_Puller`.

The top of the pull's class chain: prepares and opens ``local_dir``, loads the
manifests (and the seed's), lists the prefix, creates the directories, decides per
object by a three-way comparison (object, local file, manifest) whether to skip,
keep or fetch it, runs the markers and downloads, then the clean-up/delete pass,
and saves the manifests (marked complete only if everything succeeded).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from activities.storage.beneath import Tree
from activities.storage.errors import StorageError
from activities.storage.sync.common import _depth, _describe, _FileProblem, _parents, _safe_rel
from activities.storage.sync.durability import _make_durable
from activities.storage.sync.error_map import _map_error
from activities.storage.sync.manifest import _Manifest
from activities.storage.sync.pull_download import _PullDownload
from activities.storage.sync.pull_local import _PullItem
from activities.storage.sync.runner import _list_remote
from activities.storage.sync.scan import _entry_from_stat, _local_matches, _same_content
from activities.storage.sync.stats import SyncStats

log = logging.getLogger(__name__)


class _Puller(_PullDownload):
    """One pull (see :func:`activities.storage.sync.pull`)."""

    def _load_seed(self, seed: Path) -> None:
        ctx = self.ctx
        if seed == ctx.local_dir:
            return
        data = _Manifest.read_raw(seed.parent / f".{seed.name}.manifest.json")
        if data is None or data.get("bucket") != ctx.bucket or data.get("prefix") != ctx.prefix:
            log.info("pull %s: %s has no pull manifest for it; not seeding", ctx.where, seed)
            return
        raw = data.get("entries")
        if isinstance(raw, dict):
            try:
                # the seed (the host's cache) holds what storage held, symlinks included:
                # read it beneath its root too
                self.seed_tree = Tree(seed)
            except OSError as exc:
                log.info("pull %s: cannot open %s (%s); not seeding", ctx.where, seed, exc)
                return
            self.seed_entries = {k: v for k, v in raw.items() if isinstance(v, dict)}
            self.seed_root = os.fspath(seed)

    def run(self) -> SyncStats:
        try:
            return self._run_opened()
        finally:
            for tree in (self._tree, self.seed_tree, self.preserve_tree):
                if tree is not None:
                    tree.close()

    def _run_opened(self) -> SyncStats:
        ctx, runner = self.ctx, self.runner
        self._prepare_root()
        try:
            # the one use of local_dir's path: everything below goes through this fd
            self._tree = Tree(self.root)
        except OSError as exc:
            raise StorageError(
                f"Cannot pull {ctx.where} into {self.root}: {exc.strerror}.",
                bucket=ctx.bucket,
                prefix=ctx.prefix,
            ) from exc
        if self.seed_from is not None:
            self._load_seed(Path(os.path.abspath(os.fspath(self.seed_from))))
        self.manifest = _Manifest.load(ctx, "pull")
        self.push_manifest = _Manifest.load(ctx, "push")
        # the last pull completed: it removed its temporary files, none can be left over
        self.clean_start = self.manifest.found and self.manifest.complete
        try:
            self.manifest.complete = False
            self.manifest.save()  # mark "in progress" before touching anything
        except OSError as exc:
            raise StorageError(
                f"Cannot pull {ctx.where} into {self.root}: cannot write the sync manifest "
                f"{self.manifest.path} ({exc.strerror}).",
                bucket=ctx.bucket,
                prefix=ctx.prefix,
            ) from exc
        runner.set_saver(self._save_periodic)
        ok = False
        try:
            self._run()
            ok = True
        finally:
            try:
                runner.close()
            finally:
                self.manifest.complete = ok and not (runner.stopping or runner.failures)
                self._save()
        return runner.finish("pull")

    def _save_periodic(self) -> None:
        # only the pull manifest (what makes a killed pull resumable); the push
        # manifest is a hint for the next push (without it, the push compares the
        # objects' metadata instead) and is written at the end
        self._save(final=False)

    def _save(self, final: bool = True) -> None:
        if self.renamed_dirs:  # the renames the manifest records must be durable first
            dirs, self.renamed_dirs = self.renamed_dirs, {}
            _make_durable(self.tree, {dev: sorted(d) for dev, d in dirs.items()}, directories=True)
        self.manifest.save()
        if final and not self.push_manifest.foreign:  # seed the push manifest for the prefix
            self.push_manifest.save()

    def _prepare_root(self) -> None:
        try:
            st = os.stat(self.root)  # following a symlinked local_dir is the caller's choice
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise StorageError(
                f"Cannot pull {self.ctx.where} into {self.root}: {exc.strerror}.",
                bucket=self.ctx.bucket,
                prefix=self.ctx.prefix,
            ) from exc
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise StorageError(
                f"Cannot pull {self.ctx.where} into {self.root}: it exists and is not a directory.",
                bucket=self.ctx.bucket,
                prefix=self.ctx.prefix,
            )
        if st is None:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(
                    f"Cannot pull {self.ctx.where}: cannot create {self.root} ({exc.strerror}).",
                    bucket=self.ctx.bucket,
                    prefix=self.ctx.prefix,
                ) from exc

    def _run(self) -> None:
        ctx, runner, stats = self.ctx, self.runner, self.runner.stats
        listing = _list_remote(ctx, runner, "listing")
        if runner.stopping:
            return

        files: dict[str, _PullItem] = {}
        markers: dict[str, _PullItem] = {}
        dirs: set[str] = set()
        kpl = len(ctx.kp)
        for key, (size, etag, lm) in listing.items():
            rel = key[kpl:]
            if not rel:
                continue
            marker = rel.endswith("/")
            if marker:
                rel = rel[:-1]
            if not _safe_rel(rel):
                runner.fail(rel or key, f"object key '{key}' is not a safe relative path")
                continue
            item = _PullItem(key, rel, marker, size, etag, lm)
            dirs.update(_parents(rel))
            if marker:
                markers[rel] = item
                dirs.add(rel)
            else:
                files[rel] = item
        for rel in [r for r in files if r in dirs]:
            # A file (or link) and a directory of one name, which no file system holds: the
            # directory is pulled and the object stays in storage untouched. Not a failure:
            # a tree whose user pushed a link where a directory had been must still pull,
            # or its notebook could never finish a stop.
            log.warning(
                "object '%s' is a file but other objects use '%s/' as a directory; only the "
                "directory is pulled",
                files[rel].key,
                rel,
            )
            stats.files_skipped += 1
            del files[rel]

        remote_keys = {it.key for it in files.values()} | {it.key for it in markers.values()}
        self.old_entries = dict(self.manifest.entries)  # to judge local files about to go
        for table in (self.manifest.entries, self.push_manifest.entries):
            for key in [k for k in table if k not in remote_keys]:
                del table[key]

        stats.files_total = len(files) + len(markers) + len(runner.failures)
        stats.bytes_total = sum(it.size for it in files.values())

        # directories first, parents before children, on this thread
        for d in sorted(dirs, key=_depth):
            self._ensure_dir(d)
            if runner.stopping:
                return

        fetch: list[_PullItem] = []
        for item in sorted([*markers.values(), *files.values()], key=lambda i: i.key):
            problem = self._bad_parent(item.rel)
            if problem:
                runner.fail(item.rel, problem)
                continue
            try:
                decision = self._plan(item)
            except Exception as exc:  # e.g. ELOOP: a parent was swapped for a symlink
                runner.record_error(item.rel, exc)
                continue
            if decision != "get":
                stats.files_skipped += 1
                continue
            fetch.append(item)
        if self.kept:
            log.warning(
                "pull %s -> %s: kept %d locally modified file(s) that did not change in storage "
                "since the last sync (the next push uploads them), e.g. '%s'",
                ctx.where,
                self.root,
                len(self.kept),
                self.kept[0],
            )
        runner.report()

        runner.run_pool([i for i in fetch if i.marker], self._pull_marker, self._on_done)
        try:
            runner.run_async(
                [i for i in fetch if not i.marker],
                self._start_get,
                self._finish_get,
                self._on_done,
                idle=self._maybe_flush,
            )
        finally:
            self._discard_pending()

        if runner.stopping:
            return
        self._cleanup_local(files, dirs)
        if self.preserved:
            log.warning(
                "pull %s -> %s: moved %d local file(s) that were not in storage (or were "
                "changed locally) to %s instead of deleting/overwriting them, e.g. '%s'",
                ctx.where,
                self.root,
                len(self.preserved),
                self.preserve_root,
                self.preserved[0],
            )

    # -- planning helpers ---------------------------------------------------

    def _bad_parent(self, rel: str) -> str | None:
        """Why ``rel`` cannot be written (a parent directory could not be made), if so."""
        if not self.bad_dirs:
            return None
        for d in (rel, *_parents(rel)):
            if d in self.bad_dirs:
                return f"local directory '{d}' could not be created: {self.bad_dirs[d]}"
        return None

    def _ensure_dir(self, d: str) -> None:
        if self._bad_parent(d):
            self.bad_dirs[d] = "its parent could not be created"
            return
        tree = self.tree
        try:
            st = tree.lstat(d)
            if st is not None and stat.S_ISDIR(st.st_mode):
                return
            if st is not None:
                what = "symlink" if stat.S_ISLNK(st.st_mode) else "file"
                if not self.delete:
                    raise _FileProblem(
                        f"a local {what} is in the way (not replaced because delete=False)"
                    )
                self._remove(d, self.ctx.kp + d)
                self.runner.stats.files_deleted += 1
            with tree.parent(d) as (dfd, name):
                os.mkdir(name, dir_fd=dfd)
        except Exception as exc:
            mapped = _map_error(exc, self.ctx, "creating directories for")
            if mapped is not None:  # e.g. disk full: stop everything
                self.runner.record_error(d, exc)
            self.bad_dirs[d] = str(exc) if isinstance(exc, _FileProblem) else _describe(exc)

    def _plan(self, item: _PullItem) -> str:
        """Decide what to do with one object: "skip", "keep" (local wins) or "get".

        Three-way comparison between the remote object, the local file and the
        manifest (their common state at the last sync):

        * both unchanged                      -> skip
        * only the remote changed             -> get (overwrite the synced local copy)
        * only the local file changed         -> keep it: it holds work that was never
                                                 pushed (e.g. the last push failed)
        * both changed / no manifest entry    -> get, after moving the local file aside
                                                 into the ``.{name}.preserved`` area
        """
        m = self.manifest.entries.get(item.key)
        tree, rel = self.tree, item.rel
        st = tree.lstat(rel)
        remote_same = (
            m is not None
            and m.get("etag") == item.etag
            and m.get("size") == item.size
            # a metadata-only change (chmod, touch) re-uploads the same bytes: same
            # ETag, new LastModified.  Entries seeded by a push have no "lm".
            and m.get("lm") in (None, item.lm)
        )
        local_same = m is not None and _local_matches(m, st, tree, rel)
        if remote_same and local_same and m is not None:
            seeded = dict(m)
            seeded.pop("lm", None)
            if self.push_manifest.entries.get(item.key) != seeded:
                self.push_manifest.entries[item.key] = seeded
            return "skip"
        if item.marker or st is None or stat.S_ISDIR(st.st_mode) or local_same:
            return "get"
        if remote_same:
            self.kept.append(item.rel)
            return "keep"
        if stat.S_ISREG(st.st_mode) and _same_content(tree, rel, st, item.size, item.etag):
            # Placed by a pull that was killed before it recorded it: the same bytes as
            # the object, so neither a conflict to set aside nor a file to fetch again.
            entry = _entry_from_stat("f", item.size, item.etag, st, None)
            self.manifest.entries[item.key] = {**entry, "lm": item.lm}
            self.push_manifest.entries[item.key] = entry
            self.runner.mark_dirty()
            return "skip"
        item.preserve = True
        return "get"
