"""Synchronise a local directory with an S3 prefix (both directions).

Used by Temporal activities to pull a notebook's volumes and workspace when it
starts and to push them back when it stops.  Everything here is synchronous
(blocking) for the caller.  Object data moves through the AWS Common Runtime S3
client (:mod:`activities.storage.crt_engine`: native signing, connection
pooling, retries and multipart splitting, many requests in flight from one
thread); boto3 is used for the rest (bucket checks, HEAD, deletes).

Object layout under ``prefix`` (``prefix/rel/path``):

* regular file      -> object with the file's bytes, metadata ``mode`` (octal
  permission bits) and ``mtime`` (seconds since the epoch, nanosecond
  precision, e.g. ``"1700000000.123456789"``)
* symbolic link     -> zero-byte object with metadata ``symlink`` = target
  (percent-encoded so any target fits in an ASCII header) and ``mtime``
* empty directory   -> zero-byte marker object ``rel/dir/`` with ``mode`` and
  ``mtime`` metadata (some servers, e.g. SeaweedFS, drop the metadata of
  directory markers; the directory is still recreated)

Safety rules (losing user data is the worst possible bug):

* a pull writes each file to a temporary file in the destination directory,
  makes it durable (fsync, or one ``syncfs`` for a batch of files) and only
  then renames it into place, so a crash never leaves a truncated file under
  the final name; the manifest is only saved after the renames it records are
  durable too; a pull never writes through a symlink;
* a push never follows symlinks and never reads outside ``local_dir``;
* the tree is someone else's while we work on it (a notebook's code can swap
  any directory or file for a symlink at any moment): ``local_dir`` is opened
  once and every path below it is resolved from that descriptor without
  following a symlink in any component (:mod:`activities.storage.beneath`:
  ``openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS)``, else a walk with
  ``O_NOFOLLOW|O_DIRECTORY`` descriptors), then used by name relative to a
  (cached) directory descriptor.  A swap makes that file's operation fail
  (``ELOOP``/``ENOTDIR``: the file is counted as failed, the sync raises at the
  end as for any failed file); it never reads or writes outside the tree.  The
  CRT only ever gets ``/proc/self/fd/N`` of a file we opened that way;
* any per-file failure makes the whole call raise (after everything else has
  been tried), so a caller never mistakes a partial sync for a complete one;
* deletions (``delete=True``) are skipped entirely if anything else failed;
* ``push(delete=True)`` refuses to run if the last pull of the same
  bucket/prefix into ``local_dir`` did not complete (the local tree would be
  missing files and the push would delete them remotely), and only deletes
  objects this directory knew (recorded by an earlier pull or push, with the
  same ETag) and no longer has: an object new or changed in storage since is
  someone else's and is kept, and a directory with no record deletes nothing;
* a push never puts back a stale copy over someone else's write (see
  ``docs/sync-conflicts.md``): a file unchanged locally since the last sync whose
  object changed (ETag, size, the LastModified a pull recorded, a symlink's
  target) or was deleted in storage meanwhile is left alone; a file changed on
  both sides is uploaded after the stored version was copied (server side) to
  ``prefix/.ainb-preserved/<UTC time>-<random>/rel/path``, and so is one whose
  object is new since the last sync (a directory with no record of the prefix,
  i.e. a first push, uploads as before).  Uploads are conditional on the listed
  version (``If-Match`` / ``If-None-Match``, dropped for the rest of the push if
  the server does not implement them): a write landing between the listing and
  the upload makes that file fail instead of being overwritten;
* a pull never destroys local data that is not known to be in storage: a
  local file changed since the last sync while the object did not (e.g. the
  last push failed) is kept as is; a local file that must be overwritten or
  deleted but is not exactly what an earlier sync recorded is moved to
  ``.{name}.preserved/<run>/`` next to ``local_dir`` instead; directories are
  never removed recursively; the delete pass does not cross mount points;
* setuid/setgid bits are never applied on pull;
* a sync holds an exclusive lock (``.{name}.sync.lock``) on ``local_dir``.

Two JSON manifests next to (never inside) ``local_dir`` remember what was
transferred so that unchanged files are skipped:
``.{name}.manifest.json`` (pull) and ``.{name}.push-manifest.json`` (push).
Both map an S3 key to the object's size/ETag and the local file's type, mtime
and mode at the time it was known to be identical to the object (the pull one
also keeps the listing's LastModified, to notice metadata-only re-uploads).
Each side also records what it transferred in the other's manifest (for the
same bucket/prefix), so the push after a pull, and the pull after a push, only
transfer what changed.  ``push(exclude=...)`` also skips these side files of
the excluded directories.  ``pull`` has no ``exclude``: do not nest separately
synced directories inside a tree pulled with ``delete=True``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from activities.storage.errors import StorageError
from activities.storage.sync.common import _avoid_empty_expect_continue, _Ctx, _normalize_excludes
from activities.storage.sync.constants import (
    _DELETE_BATCH,
)
from activities.storage.sync.constants import (
    DIRECTORY_CONTENT_TYPE as DIRECTORY_CONTENT_TYPE,
)
from activities.storage.sync.constants import (
    IN_MEMORY_UPLOAD_LIMIT as IN_MEMORY_UPLOAD_LIMIT,
)
from activities.storage.sync.constants import (
    META_MODE as META_MODE,
)
from activities.storage.sync.constants import (
    META_MTIME as META_MTIME,
)
from activities.storage.sync.constants import (
    META_SYMLINK as META_SYMLINK,
)
from activities.storage.sync.constants import (
    MULTIPART_THRESHOLD as MULTIPART_THRESHOLD,
)
from activities.storage.sync.constants import (
    PRESERVED_AREA as PRESERVED_AREA,
)
from activities.storage.sync.error_map import _bucket_level_error, _delete_keys
from activities.storage.sync.manifest import _DirLock
from activities.storage.sync.pull import _Puller
from activities.storage.sync.push import _Pusher
from activities.storage.sync.stats import SyncStats

__all__ = [
    "SyncStats",
    "check_readable",
    "delete_prefix",
    "pull",
    "push",
]


def pull(
    s3: Any,
    bucket: str,
    prefix: str,
    local_dir: Path,
    *,
    delete: bool = False,
    progress: Callable[[SyncStats], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    workers: int = 16,
    seed_from: Path | None = None,
) -> SyncStats:
    """Make ``local_dir`` mirror the objects under ``s3://bucket/prefix``.

    Creates ``local_dir`` (and its parents) if needed.  With ``delete=True``
    local files, symlinks and directories that do not exist remotely are
    removed; with ``delete=False`` they are kept.  Returns the stats; raises
    :class:`StorageError` (or a subclass) if anything could not be pulled.

    ``seed_from`` names a directory previously pulled from the same
    bucket/prefix (with its own pull manifest next to it, e.g. a host-local
    cache).  A file whose object has the same ETag and size as the seed's
    manifest records, and whose seed copy is still exactly what that manifest
    recorded, is copied locally instead of downloaded (``files_seeded``).
    """
    ctx = _Ctx.make(s3, bucket, prefix, local_dir, "pull")
    with _DirLock(ctx):
        return _Puller(ctx, delete, progress, should_stop, workers, seed_from).run()


def push(
    s3: Any,
    local_dir: Path,
    bucket: str,
    prefix: str,
    *,
    delete: bool = False,
    exclude: Sequence[str] = (),
    progress: Callable[[SyncStats], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    workers: int = 16,
) -> SyncStats:
    """Upload ``local_dir`` to ``s3://bucket/prefix``.

    ``exclude`` lists relative POSIX paths under ``local_dir`` (typically
    directories, e.g. ``"data/vol1"``) that are neither uploaded nor deleted
    remotely.  With ``delete=True`` remote objects that have no local
    counterpart are deleted, if this directory knew them as they are.  An object
    changed in storage since the last sync is never replaced by a local copy that
    did not change; if both changed, the stored version is first copied under
    ``prefix/.ainb-preserved/`` (see docs/sync-conflicts.md).  Returns the stats;
    raises :class:`StorageError` (or a subclass) if anything could not be pushed.
    """
    ctx = _Ctx.make(s3, bucket, prefix, local_dir, "push")
    excl = _normalize_excludes(exclude)
    _avoid_empty_expect_continue(s3)
    with _DirLock(ctx):
        return _Pusher(ctx, delete, excl, progress, should_stop, workers).run()


def delete_prefix(s3: Any, bucket: str, prefix: str) -> int:
    """Delete every object under ``s3://bucket/prefix/``; return how many.

    Refuses an empty prefix (that would wipe the whole bucket).
    """
    ctx = _Ctx.make(s3, bucket, prefix, None, "delete")
    if not ctx.kp:
        raise ValueError(
            f"refusing to delete everything in bucket '{bucket}': delete_prefix needs a "
            "non-empty prefix"
        )
    deleted = 0
    try:
        paginator = s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=ctx.kp):
            keys = [o["Key"] for o in page.get("Contents", ())]
            for i in range(0, len(keys), _DELETE_BATCH):
                batch = keys[i : i + _DELETE_BATCH]
                failed = _delete_keys(ctx, batch, "deleting objects in")
                deleted += len(batch) - len(failed)
                if failed:
                    key, (code, message) = next(iter(failed.items()))
                    raise StorageError(
                        f"Could not delete {len(failed)} object(s) under {ctx.where} at "
                        f"{ctx.endpoint}; first: '{key}': {code}: {message}. "
                        f"{deleted} object(s) were deleted.",
                        bucket=bucket,
                        prefix=ctx.prefix,
                        code=code,
                    )
    except StorageError:
        raise
    except Exception as exc:
        raise _bucket_level_error(exc, ctx, "deleting objects in") from exc
    return deleted


def check_readable(s3: Any, bucket: str, prefix: str) -> None:
    """Cheaply check that ``s3://bucket/prefix`` can be listed.

    Raises :class:`StorageAccessError` (bucket missing, credentials wrong or
    not allowed) or :class:`StorageUnavailableError` (endpoint unreachable,
    failing or throttling).
    """
    ctx = _Ctx.make(s3, bucket, prefix, None, "check")
    try:
        s3.list_objects_v2(Bucket=bucket, Prefix=ctx.kp, MaxKeys=1)
    except Exception as exc:
        raise _bucket_level_error(exc, ctx, "listing") from exc
