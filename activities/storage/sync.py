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

import base64
import contextlib
import ctypes
import dataclasses
import email.utils
import errno
import fcntl
import hashlib
import json
import logging
import os
import queue
import random
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes, unquote_to_bytes

from botocore.exceptions import (
    BotoCoreError,
    ChecksumError,
    ClientError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    EndpointConnectionError,
    FlexibleChecksumError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from activities.storage.beneath import Tree, move_entry, swapped
from activities.storage.crt_engine import CrtCancelled, CrtEngine, Transfer
from activities.storage.errors import (
    StorageAccessError,
    StorageError,
    StorageUnavailableError,
    SyncCancelled,
)

__all__ = [
    "SyncStats",
    "check_readable",
    "delete_prefix",
    "pull",
    "push",
]

log = logging.getLogger(__name__)

MiB = 1024 * 1024

#: Files at least this large are "large": progress is reported while they
#: move, and a pull starts their writeback to disk while they download.  (The
#: CRT uses multipart/ranged transfers above its part size, 8 MiB.)
MULTIPART_THRESHOLD = 32 * MiB
#: Files up to this size are read into memory before upload (consistent
#: snapshot, Content-MD5 integrity check); larger ones are streamed by the CRT
#: from the already opened file (``/proc/self/fd/N``, never a path that could
#: have become a symlink).
IN_MEMORY_UPLOAD_LIMIT = 1 * MiB

META_MODE = "mode"
META_MTIME = "mtime"
META_SYMLINK = "symlink"
DIRECTORY_CONTENT_TYPE = "application/x-directory"

_IO_CHUNK = 1 * MiB
_PROGRESS_INTERVAL = 0.5
_STOP_POLL_INTERVAL = 0.05
_MANIFEST_SAVE_SECONDS = 1.5
# A pull makes finished files durable and renames them into place in batches.
_FLUSH_FILES = 2000
# Up to this many files (or directories, for renames) are fsynced one by one; more
# take one syncfs, which also flushes whatever else is dirty on the file system.
_FSYNC_EACH_MAX = 32
_FLUSH_BYTES = 256 * MiB
_FLUSH_SECONDS = 0.5
# In-flight CRT requests per sync (per ``workers``, bounded).
_INFLIGHT_PER_WORKER = 8
_MAX_INFLIGHT = 256
_PROC_FD = "/proc/self/fd"
_HAVE_PROC_FD = os.path.isdir(_PROC_FD)
_MANIFEST_VERSION = 1
_DELETE_BATCH = 1000
_STREAM_ATTEMPTS = 3
_CHANGE_ATTEMPTS = 3
_MAX_KEY_BYTES = 1024

_TMP_PREFIX = ".ainb-tmp-"
_TMP_RE = re.compile(r"^\.ainb-tmp-[0-9a-f]{16}$")

#: Under the prefix: where a push keeps the stored version of an object it replaces
#: when both sides changed it since the last sync (``<run>/<relative key>``).
PRESERVED_AREA = ".ainb-preserved"
#: Larger objects cannot be copied by one CopyObject: a multipart copy is used.
_MAX_COPY_BYTES = 5 * 1024 * MiB

# Error codes that mean "the configuration does not let us use this bucket".
_ACCESS_CODES = {
    "AccessDenied",
    "AllAccessDisabled",
    "AccountProblem",
    "AuthorizationHeaderMalformed",
    "AuthorizationQueryParametersError",
    "ExpiredToken",
    "Forbidden",
    "InvalidAccessKeyId",
    "InvalidBucketName",
    "InvalidClientTokenId",
    "InvalidSecurity",
    "InvalidToken",
    "MissingSecurityHeader",
    "NoSuchBucket",
    "NotSignedUp",
    "PermanentRedirect",
    "SignatureDoesNotMatch",
    "TokenRefreshRequired",
    "UnrecognizedClientException",
    "401",
    "403",
}
# Error codes that mean "the service is failing or overloaded right now".
_UNAVAILABLE_CODES = {
    "BandwidthLimitExceeded",
    "InternalError",
    "OperationAborted",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestTimeTooSkewed",
    "RequestTimeout",
    "ServiceUnavailable",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "TooManyRequestsException",
    "429",
    "500",
    "502",
    "503",
    "504",
}
_BUCKET_OPERATIONS = {"HeadBucket", "ListObjectsV2", "ListObjects", "ListMultipartUploads"}
_FATAL_OS_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}

# Errors while reading a response body that are worth retrying the file for.
_STREAM_ERRORS: tuple[type[BaseException], ...] = (
    HTTPClientError,  # ResponseStreamingError, ReadTimeoutError, ConnectionClosedError
    IncompleteReadError,
    ChecksumError,
    FlexibleChecksumError,
    ConnectionError,  # builtin: reset / aborted
)


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------


@dataclass
class SyncStats:
    files_total: int = 0
    bytes_total: int = 0
    files_done: int = 0  # transferred
    bytes_done: int = 0  # transferred
    files_skipped: int = 0  # unchanged, not transferred
    files_failed: int = 0
    files_deleted: int = 0
    files_seeded: int = 0  # copied from ``seed_from`` instead of downloaded (also in files_done)


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


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ctx:
    s3: Any
    bucket: str
    prefix: str  # normalised, no leading/trailing slash ("" for the bucket root)
    kp: str  # key prefix: "" or "prefix/"
    local_dir: Path | None
    endpoint: str
    op: str

    @staticmethod
    def make(s3: Any, bucket: str, prefix: str, local_dir: Path | None, op: str) -> _Ctx:
        if not bucket:
            raise ValueError("bucket must not be empty")
        parts = [p for p in (prefix or "").split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise ValueError(f"invalid S3 prefix {prefix!r}: '.' and '..' are not allowed")
        norm = "/".join(parts)
        endpoint = getattr(getattr(s3, "meta", None), "endpoint_url", None) or "the S3 endpoint"
        ldir = Path(os.path.abspath(os.fspath(local_dir))) if local_dir is not None else None
        return _Ctx(s3, bucket, norm, f"{norm}/" if norm else "", ldir, endpoint, op)

    @property
    def where(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def manifest_path(self, kind: str) -> Path:
        assert self.local_dir is not None
        suffix = "manifest.json" if kind == "pull" else "push-manifest.json"
        return self.local_dir.parent / f".{self.local_dir.name}.{suffix}"


def _normalize_excludes(exclude: Sequence[str]) -> tuple[str, ...]:
    if isinstance(exclude, str):
        exclude = (exclude,)
    out = []
    for e in exclude:
        parts = [p for p in str(e).replace(os.sep, "/").split("/") if p and p != "."]
        if not parts:
            raise ValueError(f"invalid exclude path {e!r}: it would exclude everything")
        if ".." in parts:
            raise ValueError(f"invalid exclude path {e!r}: '..' is not allowed")
        out.append("/".join(parts))
    return _with_sidecars(tuple(out))


_SIDECAR_SUFFIXES = (
    "manifest.json",
    "manifest.json.tmp",
    "push-manifest.json",
    "push-manifest.json.tmp",
    "sync.lock",
    "preserved",
)


def _with_sidecars(excludes: tuple[str, ...]) -> tuple[str, ...]:
    """Also exclude the manifests/lock/preserved area of excluded directories.

    A volume synced on its own and mounted at ``data/vol1`` inside the workspace
    keeps ``data/.vol1.manifest.json`` & co. next to it, i.e. inside the workspace.
    """
    out = list(excludes)
    for e in excludes:
        head, _, name = e.rpartition("/")
        for suffix in _SIDECAR_SUFFIXES:
            side = f".{name}.{suffix}"
            out.append(f"{head}/{side}" if head else side)
    return tuple(out)


def _is_excluded(rel: str, excludes: tuple[str, ...]) -> bool:
    for e in excludes:
        if rel == e or rel.startswith(e + "/"):
            return True
    return False


def _parents(rel: str) -> Iterable[str]:
    """Yield all ancestor directories of ``rel`` ("a/b/c" -> "a/b", "a")."""
    i = rel.rfind("/")
    while i > 0:
        rel = rel[:i]
        yield rel
        i = rel.rfind("/")


def _depth(rel: str) -> int:
    return rel.count("/")


def _safe_rel(rel: str) -> bool:
    if not rel or rel.startswith("/") or "\0" in rel:
        return False
    return all(p not in ("", ".", "..") for p in rel.split("/"))


def _drop_expect_for_empty_body(request: Any, **kwargs: Any) -> None:
    headers = request.headers
    if headers.get("Content-Length") == "0" and "Expect" in headers:
        del headers["Expect"]


def _avoid_empty_expect_continue(s3: Any) -> None:
    """Work around boto/botocore#3755 on this client only.

    botocore sends ``Expect: 100-continue`` even for zero-byte PUT bodies (our
    directory markers and symlinks).  Servers answer those at once without a
    100, and botocore then mis-parses the *next* response on the pooled
    connection (MissingHeaderBodySeparatorDefect): a silent stall until the
    read timeout plus a hidden retry.  RFC 7231 forbids the header without a
    body and it is not signed, so dropping it is safe.  Registration is
    idempotent (unique_id) and only affects this client.
    """
    events = getattr(getattr(s3, "meta", None), "events", None)
    if events is not None:
        events.register(
            "before-send.s3",
            _drop_expect_for_empty_body,
            unique_id="ainb-storage-sync-no-empty-expect",
        )


def _etag(value: str | None) -> str:
    return (value or "").strip().strip('"')


def _format_mtime(ns: int) -> str:
    sec, frac = divmod(ns, 1_000_000_000)
    return f"{sec}.{frac:09d}"


def _parse_mtime(value: str | None) -> int | None:
    if not value:
        return None
    try:
        return int(Decimal(value.strip()) * 1_000_000_000)
    except (InvalidOperation, ValueError, OverflowError):
        return None


def _format_mode(mode: int) -> str:
    return format(stat.S_IMODE(mode), "04o")


def _parse_mode(value: str | None) -> int | None:
    if not value:
        return None
    try:
        return stat.S_IMODE(int(value.strip(), 8))
    except ValueError:
        return None


def _encode_target(target: str) -> str:
    return quote_from_bytes(os.fsencode(target), safe="/")


def _decode_target(value: str) -> str:
    return os.fsdecode(unquote_to_bytes(value))


def _new_tmp_name() -> str:
    # unpredictable enough; files are created with O_EXCL|O_NOFOLLOW anyway
    return f"{_TMP_PREFIX}{random.getrandbits(64):016x}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code')}: {err.get('Message') or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc) or type(exc).__name__
    return text


class _FileProblem(Exception):
    """A per-file failure with a message meant for people."""


class _Interrupted(Exception):
    """The transfer of one file was abandoned because the sync is stopping."""


class _Changed(_FileProblem):
    """The local file changed while it was being uploaded."""


class _ShortRead(Exception):
    """A download delivered fewer/more bytes than announced."""


# --------------------------------------------------------------------------
# error mapping
# --------------------------------------------------------------------------


def _access(ctx: _Ctx, msg: str, code: str | None = None) -> StorageAccessError:
    return StorageAccessError(msg, bucket=ctx.bucket, prefix=ctx.prefix, code=code)


def _unavailable(ctx: _Ctx, msg: str, code: str | None = None) -> StorageUnavailableError:
    return StorageUnavailableError(msg, bucket=ctx.bucket, prefix=ctx.prefix, code=code)


def _error_for_code(
    ctx: _Ctx,
    code: str,
    message: str,
    doing: str,
    status: int | None,
    operation: str | None,
) -> StorageError | None:
    where, ep, b = ctx.where, ctx.endpoint, ctx.bucket
    if code == "NoSuchBucket" or (code in ("404", "NotFound") and operation in _BUCKET_OPERATIONS):
        return _access(
            ctx,
            f"Bucket '{b}' does not exist at {ep}, so {where} cannot be used ({doing} it failed "
            f"with {code or 'NoSuchBucket'}). Create the bucket or fix the bucket name in the "
            "storage settings.",
            code or "NoSuchBucket",
        )
    if code == "InvalidAccessKeyId":
        return _access(
            ctx,
            f"The storage credentials were rejected by {ep} while {doing} {where}: the access "
            "key ID is not known there (InvalidAccessKeyId). Check the access key configured "
            "for this storage.",
            code,
        )
    if code == "SignatureDoesNotMatch":
        return _access(
            ctx,
            f"The storage credentials were rejected by {ep} while {doing} {where}: the secret "
            "key does not match the access key (SignatureDoesNotMatch). Check the secret key "
            "configured for this storage.",
            code,
        )
    if code in ("ExpiredToken", "TokenRefreshRequired", "InvalidToken", "InvalidClientTokenId"):
        return _access(
            ctx,
            f"The storage credentials for {where} at {ep} are expired or invalid ({code}) while "
            f"{doing} it. Renew the credentials configured for this storage.",
            code,
        )
    if code == "InvalidBucketName":
        return _access(
            ctx,
            f"'{b}' is not a valid bucket name for {ep} (InvalidBucketName) while {doing} "
            f"{where}. Fix the bucket name in the storage settings.",
            code,
        )
    if code in ("PermanentRedirect", "AuthorizationHeaderMalformed"):
        return _access(
            ctx,
            f"Bucket '{b}' is not served by {ep} in the configured region ({code}: {message}) "
            f"while {doing} {where}. Fix the endpoint/region in the storage settings.",
            code,
        )
    if code in _ACCESS_CODES:
        return _access(
            ctx,
            f"Access to {where} was denied by {ep} while {doing} it ({code}"
            f"{': ' + message if message else ''}). Make sure the configured credentials may "
            "list, read and write this bucket and prefix.",
            code,
        )
    if code in _UNAVAILABLE_CODES or (status is not None and status >= 500):
        hint = (
            " The clock of this host is off; fix its time synchronisation."
            if code == "RequestTimeTooSkewed"
            else " This is usually temporary; retry later."
        )
        return _unavailable(
            ctx,
            f"The storage service at {ep} is failing or overloaded ({code or status}"
            f"{': ' + message if message else ''}) while {doing} {where}.{hint}",
            code,
        )
    return None


def _map_error(exc: BaseException, ctx: _Ctx, doing: str) -> StorageError | None:
    """Map an exception to a sync-wide StorageError, or None if it is per-file."""
    if isinstance(exc, StorageError):
        return exc
    # s3transfer's RetriesExceededError (duck-typed: importing s3transfer is slow)
    if type(exc).__name__ == "RetriesExceededError" and getattr(exc, "last_exception", None):
        mapped = _map_error(exc.last_exception, ctx, doing)
        if mapped is not None:
            return mapped
        return _unavailable(
            ctx,
            f"Repeated failures talking to {ctx.endpoint} while {doing} {ctx.where}: "
            f"{exc.last_exception}. Retry later.",
        )
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {}) or {}
        code = str(err.get("Code") or "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return _error_for_code(
            ctx, code, str(err.get("Message") or ""), doing, status, exc.operation_name
        )
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)):
        return _access(
            ctx,
            f"No usable S3 credentials are configured for {ctx.where} at {ctx.endpoint} "
            f"({exc}). Configure an access key and secret key for this storage.",
            type(exc).__name__,
        )
    if isinstance(exc, EndpointConnectionError):
        return _unavailable(
            ctx,
            f"Cannot connect to the storage endpoint {ctx.endpoint} while {doing} {ctx.where} "
            f"({exc}). The storage service may be down or unreachable from this host; retry "
            "later or check the endpoint URL.",
            "EndpointConnectionError",
        )
    if isinstance(exc, (ConnectTimeoutError, ReadTimeoutError)):
        return _unavailable(
            ctx,
            f"The storage endpoint {ctx.endpoint} timed out while {doing} {ctx.where} ({exc}). "
            "The service may be overloaded or unreachable; retry later.",
            type(exc).__name__,
        )
    if isinstance(exc, (BotoConnectionError, HTTPClientError, ConnectionError)):
        return _unavailable(
            ctx,
            f"The connection to the storage endpoint {ctx.endpoint} failed while {doing} "
            f"{ctx.where} ({exc}). Retry later.",
            type(exc).__name__,
        )
    if isinstance(exc, OSError) and exc.errno in _FATAL_OS_ERRNOS:
        what = {
            errno.ENOSPC: "the local disk is full",
            errno.EDQUOT: "the local disk quota is exhausted",
            errno.EROFS: "the local file system is read-only",
        }[exc.errno]
        return StorageError(
            f"Stopped {doing} {ctx.where} (local directory {ctx.local_dir}) because {what} "
            f"({exc}). Free some space or fix the local file system and retry.",
            bucket=ctx.bucket,
            prefix=ctx.prefix,
            code=errno.errorcode.get(exc.errno or 0),
        )
    return None


def _bucket_level_error(exc: BaseException, ctx: _Ctx, doing: str) -> StorageError:
    mapped = _map_error(exc, ctx, doing)
    if mapped is not None:
        return mapped
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {}) or {}
        text = f"{err.get('Code')}: {err.get('Message')}"
    else:
        text = str(exc) or type(exc).__name__
    return StorageError(
        f"Failed {doing} {ctx.where} at {ctx.endpoint}: {text}",
        bucket=ctx.bucket,
        prefix=ctx.prefix,
    )


def _delete_keys(ctx: _Ctx, keys: Sequence[str], doing: str) -> dict[str, tuple[str, str]]:
    """Delete up to 1000 keys; return {key: (code, message)} for the ones that failed.

    Uses DeleteObjects and falls back to one DeleteObject per key if the server
    rejects the batch request itself (some S3-compatible servers do not implement
    it or insist on Content-MD5).  Sync-wide problems raise a StorageError.
    """
    try:
        resp = ctx.s3.delete_objects(
            Bucket=ctx.bucket,
            Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True},
        )
    except ClientError as exc:
        mapped = _map_error(exc, ctx, doing)
        if mapped is not None:
            raise mapped from exc
        log.info("DeleteObjects rejected (%s); deleting one object at a time", _describe(exc))
        failed: dict[str, tuple[str, str]] = {}
        for key in keys:
            try:
                ctx.s3.delete_object(Bucket=ctx.bucket, Key=key)
            except ClientError as one:
                mapped = _map_error(one, ctx, doing)
                if mapped is not None:
                    raise mapped from one
                err = one.response.get("Error", {}) or {}
                failed[key] = (str(err.get("Code", "")), str(err.get("Message", "")))
        return failed
    except Exception as exc:
        mapped = _map_error(exc, ctx, doing)
        if mapped is not None:
            raise mapped from exc
        raise
    failed = {}
    for err in resp.get("Errors") or []:
        code, message = str(err.get("Code", "")), str(err.get("Message", ""))
        mapped = _error_for_code(ctx, code, message, doing, None, None)
        if mapped is not None:
            raise mapped
        failed[str(err.get("Key"))] = (code, message)
    return failed


_CONDITION_UNSUPPORTED = {"NotImplemented", "501", "InvalidArgument", "InvalidRequest"}


def _condition_refused(exc: BaseException) -> str | None:
    """Why a conditional request failed: "failed" (the object is not the expected
    one), "unsupported" (the server does not implement the condition), or None."""
    if not isinstance(exc, ClientError):
        return None
    code = str((exc.response.get("Error") or {}).get("Code") or "")
    status = (exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    if code == "PreconditionFailed" or status == 412 or code == "412":
        return "failed"
    # AWS answers 501 NotImplemented for a condition it does not support; other servers
    # reject the header as a bad request: either way, the upload is worth one more try
    if code in _CONDITION_UNSUPPORTED or status == 501:
        return "unsupported"
    return None


def _changed_remotely(rel: str) -> str:
    return (
        f"'{rel}' was changed in storage by someone else during this push, so it was not "
        "overwritten; push again (the stored version is then preserved)"
    )


# --------------------------------------------------------------------------
# manifests and locking
# --------------------------------------------------------------------------


class _Entries(dict):
    """A dict that remembers whether it was modified (to skip re-serialising it).

    Entries are replaced, never modified in place, by the sync code.
    """

    __slots__ = ("changed",)

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.changed = True

    def __setitem__(self, key: str, value: dict) -> None:
        self.changed = True
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self.changed = True
        super().__delitem__(key)

    def pop(self, key: str, *default: Any) -> Any:
        if key in self:
            self.changed = True
        return super().pop(key, *default)

    def popitem(self) -> Any:
        self.changed = True
        return super().popitem()

    def clear(self) -> None:
        self.changed = True
        super().clear()

    def update(self, *args: Any, **kwargs: Any) -> None:
        self.changed = True
        super().update(*args, **kwargs)

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self.changed = True
        return super().setdefault(key, default)


class _Manifest:
    """key -> {t, size, etag, mtime_ns, mode[, target]} for one bucket/prefix."""

    def __init__(self, path: Path, kind: str, ctx: _Ctx, entries: dict[str, dict]) -> None:
        self.path = path
        self.kind = kind
        self.ctx = ctx
        self.entries: _Entries = entries if isinstance(entries, _Entries) else _Entries(entries)
        #: serialised ``entries`` while they are unchanged (saving 20k entries costs ~0.1 s)
        self._entries_json: bytes | None = None
        #: (complete, entries unchanged) as last written, to skip identical rewrites
        self._on_disk: bool | None = None
        self.complete = False
        #: the file on disk belongs to another bucket/prefix (do not clobber it needlessly)
        self.foreign = False
        #: a manifest for this bucket/prefix existed before this sync
        self.found = False

    @staticmethod
    def read_raw(path: Path, blob_out: list | None = None) -> dict | None:
        try:
            with open(path, "rb") as f:
                blob = f.read()
            data = json.loads(blob)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable sync manifest %s: %s", path, exc)
            return None
        if not isinstance(data, dict) or data.get("version") != _MANIFEST_VERSION:
            return None
        if blob_out is not None:
            blob_out.append(blob)
        return data

    @classmethod
    def load(cls, ctx: _Ctx, kind: str) -> _Manifest:
        path = ctx.manifest_path(kind)
        blobs: list[bytes] = []
        data = cls.read_raw(path, blobs)
        entries: dict[str, dict] = {}
        entries_json: bytes | None = None
        foreign = False
        complete = data is None  # nothing was ever pulled: nothing is half-pulled either
        if data is not None:
            if data.get("bucket") == ctx.bucket and data.get("prefix") == ctx.prefix:
                complete = bool(data.get("complete"))
                raw = data.get("entries")
                if isinstance(raw, dict):
                    entries = {k: v for k, v in raw.items() if isinstance(v, dict)}
                    # we write "entries" last: keep its text to rewrite the header only
                    blob = blobs[0].rstrip()
                    at = blob.find(b',"entries":')
                    if len(entries) == len(raw) and at > 0 and blob.endswith(b"}"):
                        entries_json = blob[at + 11 : -1]
            else:
                foreign = True
        manifest = cls(path, kind, ctx, entries)
        if entries_json is not None:
            manifest.entries.changed = False
            manifest._entries_json = entries_json
            manifest._on_disk = complete
        manifest.foreign = foreign
        manifest.complete = complete
        manifest.found = data is not None and not foreign
        return manifest

    def save(self) -> None:
        entries = self.entries
        if entries.changed or self._entries_json is None:
            self._entries_json = json.dumps(entries, separators=(",", ":")).encode("utf-8")
            entries.changed = False
            self._on_disk = None
        elif self._on_disk is not None and self._on_disk == self.complete:
            return  # the file already says exactly this
        head = {
            "version": _MANIFEST_VERSION,
            "kind": self.kind,
            "bucket": self.ctx.bucket,
            "prefix": self.ctx.prefix,
            "complete": self.complete,
            "saved_at": time.time(),
        }
        # "entries" last (load() relies on it to reuse the entries' text)
        blob = b"".join(
            (
                json.dumps(head, separators=(",", ":")).encode("utf-8")[:-1],
                b',"entries":',
                self._entries_json,
                b"}",
            )
        )
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(blob)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        self._on_disk = self.complete


class _DirLock:
    """Exclusive lock so two syncs never work on the same local_dir at once."""

    def __init__(self, ctx: _Ctx) -> None:
        assert ctx.local_dir is not None
        self.ctx = ctx
        self.path = ctx.local_dir.parent / f".{ctx.local_dir.name}.sync.lock"
        self.fd: int | None = None

    def __enter__(self) -> _DirLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StorageError(
                f"Cannot {self.ctx.op} {self.ctx.local_dir} <-> {self.ctx.where}: cannot create "
                f"the lock file {self.path} ({exc.strerror}). Check that the parent directory "
                "exists and is writable.",
                bucket=self.ctx.bucket,
                prefix=self.ctx.prefix,
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StorageError(
                f"Cannot {self.ctx.op} {self.ctx.local_dir} <-> {self.ctx.where}: another sync "
                "of this directory is still running. Wait for it to finish and retry.",
                bucket=self.ctx.bucket,
                prefix=self.ctx.prefix,
            ) from None
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


# --------------------------------------------------------------------------
# local tree scanning
# --------------------------------------------------------------------------


@dataclass(slots=True)
class _LocalEntry:
    rel: str
    kind: str  # "f" file, "l" symlink, "d" directory
    size: int
    mtime_ns: int
    mode: int
    target: str | None = None


def _scan_local(
    tree: Tree, excludes: tuple[str, ...], *, one_fs: bool = False
) -> tuple[dict[str, _LocalEntry], list[tuple[str, str]], list[str]]:
    """Walk ``tree`` without following symlinks.

    Returns (entries by relative path, [(rel, error)], [our stale temp files]).
    Excluded subtrees are not entered.  Sockets, FIFOs and devices are ignored.
    With ``one_fs`` directories on another file system (mount points) are left
    out entirely, as if excluded.  Each directory is opened beneath the tree's
    root without following symlinks and listed through its descriptor (entries
    stat'ed and symlinks read relative to it): a directory swapped for a symlink
    since its parent was listed is an error for that directory, never followed.
    """
    root_dev = os.fstat(tree.fd).st_dev if one_fs else None
    entries: dict[str, _LocalEntry] = {}
    errors: list[tuple[str, str]] = []
    tmpfiles: list[str] = []
    stack = [""]
    root = tree.path  # for log lines only
    while stack:
        d = stack.pop()
        dfd = -1
        try:
            dfd = tree.opendir(d) if d else os.dup(tree.fd)
            with os.scandir(dfd) as it:
                for de in it:
                    name = de.name
                    rel = f"{d}/{name}" if d else name
                    if _TMP_RE.match(name):
                        tmpfiles.append(rel)
                        continue
                    if excludes and _is_excluded(rel, excludes):
                        continue
                    try:
                        st = de.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    except OSError as exc:
                        errors.append((rel, f"cannot stat: {exc.strerror}"))
                        continue
                    m = st.st_mode
                    if stat.S_ISREG(m):
                        entries[rel] = _LocalEntry(rel, "f", st.st_size, st.st_mtime_ns, m & 0o7777)
                    elif stat.S_ISDIR(m):
                        if root_dev is not None and st.st_dev != root_dev:
                            log.info("not entering mount point %s/%s", root, rel)
                            continue
                        entries[rel] = _LocalEntry(rel, "d", 0, st.st_mtime_ns, m & 0o7777)
                        stack.append(rel)
                    elif stat.S_ISLNK(m):
                        try:
                            target = os.readlink(name, dir_fd=dfd)
                        except FileNotFoundError:
                            continue
                        except OSError as exc:
                            errors.append((rel, f"cannot read symlink: {exc.strerror}"))
                            continue
                        entries[rel] = _LocalEntry(rel, "l", 0, st.st_mtime_ns, 0o777, target)
                    else:
                        log.info("not syncing special file %s/%s", root, rel)
        except FileNotFoundError:
            if not d:
                raise
        except NotADirectoryError:
            if not d:
                raise
        except OSError as exc:
            why = exc.strerror
            if d and swapped(exc):
                why = f"{why} (it was replaced by a symlink or a file during the scan)"
            errors.append((d or ".", f"cannot list directory: {why}"))
        finally:
            if dfd >= 0:
                os.close(dfd)
    return entries, errors, tmpfiles


def _local_matches(entry: dict, st: os.stat_result | None, tree: Tree, rel: str) -> bool:
    """Is the local object at ``rel`` (lstat ``st``) the one recorded in ``entry``?"""
    if st is None:
        return False
    t = entry.get("t")
    m = st.st_mode
    if t == "f":
        return (
            stat.S_ISREG(m)
            and st.st_size == entry.get("size")
            and st.st_mtime_ns == entry.get("mtime_ns")
            and (m & 0o7777) == entry.get("mode")
        )
    if t == "l":
        if not stat.S_ISLNK(m) or st.st_mtime_ns != entry.get("mtime_ns"):
            return False
        try:
            return tree.readlink(rel) == entry.get("target")
        except OSError:
            return False
    if t == "d":
        return stat.S_ISDIR(m)
    return False


# Part sizes to try when matching a local file against a multipart ETag: ours first,
# then common defaults of other uploaders (aws cli 8 MiB, rclone 5 MiB, s5cmd 50 MiB).
_ETAG_PART_SIZES = (8 * MiB, 5 * MiB, 16 * MiB, 50 * MiB, 64 * MiB, 100 * MiB)


def _same_content(tree: Tree, rel: str, st: os.stat_result, size: int, etag: str) -> bool:
    """Does the local file hold exactly the object's bytes (by its ETag: the MD5 of a
    single-part object, the MD5 of the parts' MD5s for a multipart one)?"""
    if st.st_size != size or not etag:
        return False
    digest, _, parts = etag.partition("-")
    try:
        fd = tree.open(rel, os.O_RDONLY | os.O_NONBLOCK)
        with open(fd, "rb", buffering=0) as f:
            now = os.fstat(fd)
            if not stat.S_ISREG(now.st_mode) or now.st_ino != st.st_ino:
                return False  # not the file we looked at
            if not parts:
                md5 = hashlib.md5(usedforsecurity=False)
                while chunk := f.read(MiB):
                    md5.update(chunk)
                return md5.hexdigest() == digest
            count = int(parts)
            for part in _ETAG_PART_SIZES:
                if -(-size // part) != count:
                    continue
                f.seek(0)
                sums = hashlib.md5(usedforsecurity=False)
                for _ in range(count):
                    md5 = hashlib.md5(usedforsecurity=False)
                    left = part
                    while left and (chunk := f.read(min(MiB, left))):
                        md5.update(chunk)
                        left -= len(chunk)
                    sums.update(md5.digest())
                if sums.hexdigest() == digest:
                    return True
    except (OSError, ValueError):
        return False
    return False


def _same_version(record: dict, remote: tuple[int, str, str]) -> bool:
    """Is the listed object (size, ETag, LastModified) the version ``record`` describes?

    LastModified counts only where a pull recorded it ("lm"): a metadata-only rewrite
    (chmod, touch, a symlink's new target: the same bytes, so the same ETag) is a new
    version written by someone too."""
    size, etag, lm = remote
    return (
        record.get("size") == size and record.get("etag") == etag and record.get("lm") in (None, lm)
    )


def _version(record: dict) -> tuple[int, str, str]:
    """The (size, ETag, LastModified) a manifest record was made from."""
    return record.get("size", -1), record.get("etag", ""), record.get("lm", "")


def _implied_dirs(keys: Iterable[str]) -> set[str]:
    """Every "directory" above the given keys ("a/b/c" -> "a/b", "a")."""
    out: set[str] = set()
    for key in keys:
        for d in _parents(key):
            if d in out:
                break  # and so are all of its parents
            out.add(d)
    return out


def _entry_from_stat(kind: str, size: int, etag: str, st: os.stat_result, target: str | None):
    e = {"t": kind, "size": size, "etag": etag, "mtime_ns": st.st_mtime_ns}
    e["mode"] = 0o777 if kind == "l" else st.st_mode & 0o7777
    if target is not None:
        e["target"] = target
    return e


# --------------------------------------------------------------------------
# the coordinator: thread pool, stats, progress, cancellation, failures
# --------------------------------------------------------------------------


@dataclass(slots=True)
class _Done:
    """Result of one file task (always produced by a worker, consumed by the coordinator)."""

    key: str
    entry: dict | None  # manifest entry, None if nothing should be recorded
    transferred: bool
    nbytes: int = 0


class _Progress:
    """Bytes of one large transfer reported so far (CRT threads add, coordinator settles)."""

    __slots__ = ("n", "runner")

    def __init__(self, runner: _Runner) -> None:
        self.runner = runner
        self.n = 0

    def __call__(self, nbytes: int) -> None:
        self.n += nbytes
        self.runner.add_inflight_bytes(nbytes)

    def settle(self) -> None:
        if self.n:
            self.runner.add_inflight_bytes(-self.n)
            self.n = 0


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


class _Runner:
    def __init__(
        self,
        ctx: _Ctx,
        progress: Callable[[SyncStats], None] | None,
        should_stop: Callable[[], bool] | None,
        workers: int,
        doing: str,
    ) -> None:
        self.ctx = ctx
        self.doing = doing
        self._progress = progress
        self._should_stop = should_stop
        pool_size = getattr(getattr(ctx.s3, "meta", None), "config", None)
        pool_size = getattr(pool_size, "max_pool_connections", None) or 10
        self.workers = max(1, min(int(workers), int(pool_size)))
        self.max_inflight = max(8, min(_MAX_INFLIGHT, int(workers) * _INFLIGHT_PER_WORKER))
        self.stats = SyncStats()
        self.failures: list[tuple[str, str]] = []
        self.fatal: StorageError | None = None
        self.cancelled = False
        self.cancel_event = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._engine: CrtEngine | None = None
        self._inflight_lock = threading.Lock()
        self._inflight_bytes = 0
        self._last_progress = 0.0
        self._last_stop_poll = 0.0
        self._save_cb: Callable[[], None] | None = None
        self._dirty = 0
        self._last_save = time.monotonic()
        self._save_interval = _MANIFEST_SAVE_SECONDS
        self._owner = threading.get_ident()

    def on_coordinator(self) -> bool:
        return threading.get_ident() == self._owner

    # -- lifecycle -----------------------------------------------------------

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    @property
    def pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="ainb-sync")
        return self._pool

    @property
    def engine(self) -> CrtEngine:
        if self._engine is None:
            self._engine = CrtEngine.for_client(self.ctx.s3)
        return self._engine

    # -- stats / progress / stop --------------------------------------------

    @property
    def stopping(self) -> bool:
        return self.cancelled or self.fatal is not None

    def add_inflight_bytes(self, n: int) -> None:
        with self._inflight_lock:
            self._inflight_bytes += n

    def reset_inflight_bytes(self) -> None:
        with self._inflight_lock:
            self._inflight_bytes = 0

    def report(self, force: bool = False) -> None:
        if self._progress is None:
            return
        now = time.monotonic()
        if not force and now - self._last_progress < _PROGRESS_INTERVAL:
            return
        self._last_progress = now
        with self._inflight_lock:
            extra = self._inflight_bytes
        snap = dataclasses.replace(self.stats)
        snap.bytes_done += max(0, extra)
        self._progress(snap)

    def poll_stop(self) -> bool:
        if self.cancelled:
            return True
        if self._should_stop is None:
            return False
        now = time.monotonic()
        if now - self._last_stop_poll < _STOP_POLL_INTERVAL:
            return False
        self._last_stop_poll = now
        if self._should_stop():
            log.info(
                "%s of %s <-> %s: stop requested", self.ctx.op, self.ctx.local_dir, self.ctx.where
            )
            self.cancelled = True
            self.cancel_event.set()
            return True
        return False

    def set_saver(self, cb: Callable[[], None]) -> None:
        self._save_cb = cb

    def mark_dirty(self) -> None:
        self._dirty += 1

    def maybe_save(self, force: bool = False) -> None:
        if self._save_cb is None or (not force and not self._dirty):
            return
        now = time.monotonic()
        if force or now - self._last_save >= self._save_interval:
            t0 = time.monotonic()
            self._save_cb()
            took = time.monotonic() - t0
            # save every ~1.5 s, but never spend more than ~10% of the time on manifests
            self._save_interval = max(_MANIFEST_SAVE_SECONDS, 10 * took)
            self._dirty = 0
            self._last_save = time.monotonic()

    def tick(self) -> None:
        self.poll_stop()
        self.report()
        self.maybe_save()

    # -- failures -------------------------------------------------------------

    def fail(self, rel: str, message: str) -> None:
        self.stats.files_failed += 1
        self.failures.append((rel, message))
        log.warning("%s %s: '%s': %s", self.ctx.op, self.ctx.where, rel, message)

    def record_error(self, rel: str, exc: BaseException) -> None:
        if isinstance(exc, (_Interrupted, CrtCancelled)) and self.stopping:
            return
        mapped = _map_error(exc, self.ctx, self.doing)
        if mapped is not None:
            if self.fatal is None:
                log.warning("%s %s: stopping: %s", self.ctx.op, self.ctx.where, mapped)
                self.fatal = mapped
                self.cancel_event.set()
            return
        if isinstance(exc, _FileProblem):
            self.fail(rel, str(exc))
        else:
            if not isinstance(exc, (OSError, ClientError, BotoCoreError, _ShortRead)):
                log.error("unexpected error for '%s'", rel, exc_info=exc)
            self.fail(rel, _describe(exc))

    # -- execution ------------------------------------------------------------

    def run_pool(
        self,
        items: Sequence[Any],
        fn: Callable[[Any], _Done | None],
        on_done: Callable[[Any, _Done | None], None],
    ) -> None:
        """Run ``fn(item)`` on the pool; feed results to ``on_done`` on this thread."""
        if not items:
            return
        it = iter(items)
        inflight: dict[Future, Any] = {}
        exhausted = False
        max_inflight = self.workers * 2
        while True:
            while not exhausted and len(inflight) < max_inflight:
                if self.stopping or self.poll_stop():
                    exhausted = True
                    break
                item = next(it, None)
                if item is None:
                    exhausted = True
                    break
                inflight[self.pool.submit(fn, item)] = item
            if not inflight:
                break
            done, _ = wait(inflight, timeout=0.2, return_when=FIRST_COMPLETED)
            for fut in done:
                item = inflight.pop(fut)
                try:
                    result = fut.result()
                except Exception as exc:
                    self.record_error(item.rel, exc)
                else:
                    on_done(item, result)
            self.tick()

    def run_serial(
        self,
        items: Sequence[Any],
        fn: Callable[[Any], _Done | None],
        on_done: Callable[[Any, _Done | None], None],
    ) -> None:
        """Run ``fn(item)`` one item at a time on this thread (large files)."""
        for item in items:
            if self.stopping or self.poll_stop():
                break
            try:
                result = fn(item)
            except Exception as exc:
                self.record_error(item.rel, exc)
            else:
                on_done(item, result)
            finally:
                self.reset_inflight_bytes()
            self.tick()

    def run_async(
        self,
        items: Iterable[Any],
        start: Callable[[Any, Callable[[Transfer], None]], Transfer | _Done | None],
        finish: Callable[[Any, Transfer, Callable[[Transfer], None]], Transfer | _Done | None],
        on_done: Callable[[Any, _Done | None], None],
        *,
        idle: Callable[[bool], None] | None = None,
    ) -> None:
        """Run CRT requests for ``items``, up to ``max_inflight`` at a time.

        ``start(item, notify)`` starts a request (or returns a result at once);
        ``finish(item, transfer, notify)`` turns a completed request into a
        result, or starts a new request (a retry).  Both, and ``on_done``, run on
        this thread; CRT threads only queue completed transfers.  On stop or on a
        sync-wide error the in-flight requests are cancelled and their
        completions still consumed (so ``finish`` cleans up after them).
        ``idle(final)`` is called after every round and once at the end.
        """
        done_q: queue.SimpleQueue[Transfer] = queue.SimpleQueue()
        notify = done_q.put
        it = iter(items)
        inflight: dict[int, tuple[Transfer, Any]] = {}
        exhausted = False
        cancelled = False

        def handle(item: Any, result: Transfer | _Done | None) -> None:
            if isinstance(result, Transfer):
                inflight[id(result)] = (result, item)
            else:
                on_done(item, result)

        try:
            while True:
                while not exhausted and len(inflight) < self.max_inflight:
                    if self.stopping or self.poll_stop():
                        exhausted = True
                        break
                    item = next(it, None)
                    if item is None:
                        exhausted = True
                        break
                    try:
                        handle(item, start(item, notify))
                    except Exception as exc:
                        self.record_error(item.rel, exc)
                if self.stopping and not cancelled:
                    cancelled = True
                    exhausted = True
                    for t, _item in list(inflight.values()):
                        t.cancel()
                if not inflight and exhausted:
                    break
                try:
                    t: Transfer | None = done_q.get(timeout=0.05)
                except queue.Empty:
                    t = None
                while t is not None:
                    _t, item = inflight.pop(id(t))
                    try:
                        handle(item, finish(item, t, notify))
                    except Exception as exc:
                        self.record_error(item.rel, exc)
                    try:
                        t = done_q.get_nowait()
                    except queue.Empty:
                        t = None
                if cancelled:
                    for t2, _item in list(inflight.values()):
                        t2.cancel()  # retries started by finish() after the stop
                if idle is not None:
                    idle(False)
                self.tick()
        finally:
            if inflight:  # an unexpected exception: never leave requests writing our files
                for t, _item in list(inflight.values()):
                    t.cancel()
                self.cancel_event.set()
                deadline = time.monotonic() + 60
                while any(not t.finished for t, _ in inflight.values()):
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.01)
                for t, item in list(inflight.values()):
                    with contextlib.suppress(Exception):
                        finish(item, t, lambda _t: None)
            if idle is not None:
                idle(True)

    def finish(self, verb: str) -> SyncStats:
        self.report(force=True)
        stats = dataclasses.replace(self.stats)
        if self.fatal is not None:
            self.fatal.stats = stats
            raise self.fatal
        if self.cancelled:
            raise SyncCancelled(
                f"{verb.capitalize()} of {self.ctx.local_dir} <-> {self.ctx.where} was cancelled "
                f"after {stats.files_done} of {stats.files_total} files were transferred "
                f"({stats.files_skipped} were already up to date). The next sync resumes from "
                "there.",
                bucket=self.ctx.bucket,
                prefix=self.ctx.prefix,
                stats=stats,
            )
        if self.failures:
            rel, msg = self.failures[0]
            raise StorageError(
                f"{verb.capitalize()} of {self.ctx.local_dir} <-> {self.ctx.where} did not "
                f"complete: {len(self.failures)} of {stats.files_total} files failed "
                f"({stats.files_done} transferred, {stats.files_skipped} already up to date). "
                f"First failure: '{rel}': {msg}",
                bucket=self.ctx.bucket,
                prefix=self.ctx.prefix,
                stats=stats,
            )
        return stats


# --------------------------------------------------------------------------
# listing
# --------------------------------------------------------------------------


def _list_remote(ctx: _Ctx, runner: _Runner, doing: str) -> dict[str, tuple[int, str, str]]:
    """key -> (size, etag, last-modified as ISO text) for every object under the prefix."""
    try:
        objects = runner.engine.list_all(ctx.bucket, ctx.kp, should_stop=runner.poll_stop)
    except Exception as exc:
        raise _bucket_level_error(exc, ctx, doing) from exc
    runner.report()
    return {key: (size, etag, lm) for key, size, etag, lm in objects}


# --------------------------------------------------------------------------
# pull
# --------------------------------------------------------------------------


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


class _Puller:
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
        self.tree: Tree | None = None  # local_dir, opened once by run()
        self.preserve_tree: Tree | None = None

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
            for tree in (self.tree, self.seed_tree, self.preserve_tree):
                if tree is not None:
                    tree.close()

    def _run_opened(self) -> SyncStats:
        ctx, runner = self.ctx, self.runner
        self._prepare_root()
        try:
            # the one use of local_dir's path: everything below goes through this fd
            self.tree = Tree(self.root)
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
        if remote_same and local_same:
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

    # -- workers ------------------------------------------------------------

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


# --------------------------------------------------------------------------
# push
# --------------------------------------------------------------------------


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


class _Pusher:
    def __init__(self, ctx, delete, excludes, progress, should_stop, workers) -> None:
        self.ctx: _Ctx = ctx
        self.rootp = os.fspath(ctx.local_dir)
        self.delete = delete
        self.excludes: tuple[str, ...] = excludes
        self.runner = _Runner(ctx, progress, should_stop, workers, "uploading to")
        self.protected: set[str] = set()  # keys that must not be deleted remotely
        self.tree: Tree | None = None  # local_dir, opened once by run()
        # cleared if the server rejects conditional uploads (then sent without them)
        self.conditional = True
        self.kept: list[str] = []  # changed or deleted in storage only: left as they are
        self.preserved: list[str] = []  # stored versions copied aside before replacing
        self._preserved_lock = threading.Lock()
        stamp = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(3)}"
        self.preserve_prefix = f"{ctx.kp}{PRESERVED_AREA}/{stamp}/"
        self._implied: set[str] | None = None  # directories implied by the listing

    def run(self) -> SyncStats:
        try:
            return self._run_opened()
        finally:
            if self.tree is not None:
                self.tree.close()

    def _run_opened(self) -> SyncStats:
        ctx = self.ctx
        try:
            # the one use of local_dir's path: everything below goes through this fd
            self.tree = Tree(self.rootp)
        except NotADirectoryError:
            pass
        except OSError as exc:
            raise StorageError(
                f"Cannot push {ctx.local_dir} to {ctx.where}: the local directory cannot be "
                f"read ({exc.strerror}). Nothing was uploaded or deleted.",
                bucket=ctx.bucket,
                prefix=ctx.prefix,
            ) from exc
        if self.tree is None:
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

    # -- workers ------------------------------------------------------------

    def _metadata(self, e: _LocalEntry, st: os.stat_result | None = None) -> dict[str, str]:
        mtime = st.st_mtime_ns if st is not None else e.mtime_ns
        if e.kind == "l":
            return {META_MTIME: _format_mtime(mtime), META_SYMLINK: _encode_target(e.target or "")}
        mode = st.st_mode if st is not None else e.mode
        return {META_MODE: _format_mode(mode), META_MTIME: _format_mtime(mtime)}

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

    def _on_head_done(self, item: _PushItem, done: _Done | None) -> None:
        if done is not None and done.nbytes == -1:
            self.uploads.append(item)
        else:
            self._on_done(item, done)

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

    @staticmethod
    def _same_stat(a: os.stat_result, b: os.stat_result) -> bool:
        return (a.st_size, a.st_mtime_ns, a.st_ino) == (b.st_size, b.st_mtime_ns, b.st_ino)

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
