"""Synchronise a local directory with an S3 prefix (both directions).

Used by Temporal activities to pull a notebook's volumes and workspace when it
starts and to push them back when it stops.  Everything here is synchronous
(blocking); parallelism comes from a thread pool for many small files and from
s3transfer's multipart machinery for large ones.

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
  fsyncs it and renames it into place, so a crash never leaves a truncated
  file under the final name; it never writes through a symlink;
* a push never follows symlinks and never reads outside ``local_dir``;
* any per-file failure makes the whole call raise (after everything else has
  been tried), so a caller never mistakes a partial sync for a complete one;
* deletions (``delete=True``) are skipped entirely if anything else failed;
* ``push(delete=True)`` refuses to run if the last pull of the same
  bucket/prefix into ``local_dir`` did not complete (the local tree would be
  missing files and the push would delete them remotely), and refuses to
  delete anything if there is no record at all (no manifest) that
  ``local_dir`` was ever synced with that prefix (wrong/empty directory);
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
import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
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
from s3transfer.exceptions import CancelledError as TransferCancelledError
from s3transfer.exceptions import RetriesExceededError
from s3transfer.manager import TransferConfig, TransferManager
from s3transfer.subscribers import BaseSubscriber

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

#: Files at least this large are transferred with multipart (parallel parts).
MULTIPART_THRESHOLD = 32 * MiB
#: Part size for multipart transfers (s3transfer raises it for huge files so
#: that no more than 10,000 parts are needed).
MULTIPART_CHUNKSIZE = 8 * MiB
#: Files up to this size are read into memory before upload (consistent
#: snapshot, Content-MD5 integrity check); larger ones are streamed.
IN_MEMORY_UPLOAD_LIMIT = 4 * MiB

META_MODE = "mode"
META_MTIME = "mtime"
META_SYMLINK = "symlink"
DIRECTORY_CONTENT_TYPE = "application/x-directory"

_IO_CHUNK = 1 * MiB
_PROGRESS_INTERVAL = 0.5
_STOP_POLL_INTERVAL = 0.05
_MANIFEST_SAVE_FILES = 500
_MANIFEST_SAVE_SECONDS = 5.0
_MANIFEST_VERSION = 1
_DELETE_BATCH = 1000
_STREAM_ATTEMPTS = 3
_CHANGE_ATTEMPTS = 3
_MAX_KEY_BYTES = 1024

_TMP_PREFIX = ".ainb-tmp-"
_TMP_RE = re.compile(r"^\.ainb-tmp-[0-9a-f]{16}$")

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
) -> SyncStats:
    """Make ``local_dir`` mirror the objects under ``s3://bucket/prefix``.

    Creates ``local_dir`` (and its parents) if needed.  With ``delete=True``
    local files, symlinks and directories that do not exist remotely are
    removed; with ``delete=False`` they are kept.  Returns the stats; raises
    :class:`StorageError` (or a subclass) if anything could not be pulled.
    """
    ctx = _Ctx.make(s3, bucket, prefix, local_dir, "pull")
    with _DirLock(ctx):
        return _Puller(ctx, delete, progress, should_stop, workers).run()


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
    counterpart are deleted.  Returns the stats; raises :class:`StorageError`
    (or a subclass) if anything could not be pushed.
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
    return _TMP_PREFIX + secrets.token_hex(8)


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


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
    if isinstance(exc, RetriesExceededError) and exc.last_exception is not None:
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


# --------------------------------------------------------------------------
# manifests and locking
# --------------------------------------------------------------------------


class _Manifest:
    """key -> {t, size, etag, mtime_ns, mode[, target]} for one bucket/prefix."""

    def __init__(self, path: Path, kind: str, ctx: _Ctx, entries: dict[str, dict]) -> None:
        self.path = path
        self.kind = kind
        self.ctx = ctx
        self.entries = entries
        self.complete = False
        #: the file on disk belongs to another bucket/prefix (do not clobber it needlessly)
        self.foreign = False
        #: a manifest for this bucket/prefix existed before this sync
        self.found = False

    @staticmethod
    def read_raw(path: Path) -> dict | None:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable sync manifest %s: %s", path, exc)
            return None
        if not isinstance(data, dict) or data.get("version") != _MANIFEST_VERSION:
            return None
        return data

    @classmethod
    def load(cls, ctx: _Ctx, kind: str) -> _Manifest:
        path = ctx.manifest_path(kind)
        data = cls.read_raw(path)
        entries: dict[str, dict] = {}
        foreign = False
        complete = data is None  # nothing was ever pulled: nothing is half-pulled either
        if data is not None:
            if data.get("bucket") == ctx.bucket and data.get("prefix") == ctx.prefix:
                complete = bool(data.get("complete"))
                raw = data.get("entries")
                if isinstance(raw, dict):
                    entries = {k: v for k, v in raw.items() if isinstance(v, dict)}
            else:
                foreign = True
        manifest = cls(path, kind, ctx, entries)
        manifest.foreign = foreign
        manifest.complete = complete
        manifest.found = data is not None and not foreign
        return manifest

    def save(self) -> None:
        data = {
            "version": _MANIFEST_VERSION,
            "kind": self.kind,
            "bucket": self.ctx.bucket,
            "prefix": self.ctx.prefix,
            "complete": self.complete,
            "saved_at": time.time(),
            "entries": self.entries,
        }
        blob = json.dumps(data, separators=(",", ":")).encode("utf-8")
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
    root: Path, excludes: tuple[str, ...], *, one_fs: bool = False
) -> tuple[dict[str, _LocalEntry], list[tuple[str, str]], list[str]]:
    """Walk ``root`` without following symlinks.

    Returns (entries by relative path, [(rel, error)], [our stale temp files]).
    Excluded subtrees are not entered.  Sockets, FIFOs and devices are ignored.
    With ``one_fs`` directories on another file system (mount points) are left
    out entirely, as if excluded.
    """
    root_dev = os.stat(root).st_dev if one_fs else None
    entries: dict[str, _LocalEntry] = {}
    errors: list[tuple[str, str]] = []
    tmpfiles: list[str] = []
    stack = [""]
    while stack:
        d = stack.pop()
        path = os.path.join(root, d) if d else os.fspath(root)
        try:
            with os.scandir(path) as it:
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
                            target = os.readlink(de.path)
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
            errors.append((d or ".", f"cannot list directory: {exc.strerror}"))
    return entries, errors, tmpfiles


def _local_matches(entry: dict, st: os.stat_result | None, path: str) -> bool:
    """Is the local object at ``path`` (lstat ``st``) the one recorded in ``entry``?"""
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
            return os.readlink(path) == entry.get("target")
        except OSError:
            return False
    if t == "d":
        return stat.S_ISDIR(m)
    return False


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


class _Subscriber(BaseSubscriber):
    def __init__(self, size: int, etag: str | None, on_bytes: Callable[[int], None]) -> None:
        self._size = size
        self._etag = etag
        self._on_bytes = on_bytes

    def on_queued(self, future, **kwargs):  # type: ignore[override]
        future.meta.provide_transfer_size(self._size)
        if self._etag:
            future.meta.provide_object_etag(f'"{self._etag}"')

    def on_progress(self, future, bytes_transferred, **kwargs):  # type: ignore[override]
        self._on_bytes(bytes_transferred)


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
        self.stats = SyncStats()
        self.failures: list[tuple[str, str]] = []
        self.fatal: StorageError | None = None
        self.cancelled = False
        self.cancel_event = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._tm: TransferManager | None = None
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
        if self._tm is not None:
            self._tm.shutdown(cancel=self.stopping)
            self._tm = None

    @property
    def pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="ainb-sync")
        return self._pool

    @property
    def tm(self) -> TransferManager:
        if self._tm is None:
            config = TransferConfig(
                multipart_threshold=MULTIPART_THRESHOLD,
                multipart_chunksize=MULTIPART_CHUNKSIZE,
                max_request_concurrency=self.workers,
                max_submission_concurrency=2,
                max_io_queue_size=100,
                max_in_memory_upload_chunks=min(self.workers, 10),
                max_in_memory_download_chunks=min(self.workers, 10),
            )
            self._tm = TransferManager(self.ctx.s3, config)
        return self._tm

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
        if (
            force
            or self._dirty >= _MANIFEST_SAVE_FILES
            or now - self._last_save >= self._save_interval
        ):
            t0 = time.monotonic()
            self._save_cb()
            took = time.monotonic() - t0
            # never spend more than ~5% of the time writing manifests
            self._save_interval = max(_MANIFEST_SAVE_SECONDS, 20 * took)
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
        if isinstance(exc, (_Interrupted, TransferCancelledError)) and self.stopping:
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

    def wait_transfer(self, future: Any) -> Any:
        """Wait for an s3transfer future, reporting progress; cancel it on stop."""
        cancelled = False
        while not future.done():
            time.sleep(0.05)
            self.tick()
            if self.stopping and not cancelled:
                cancelled = True
                future.cancel()
        return future.result()

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
    out: dict[str, tuple[int, str, str]] = {}
    try:
        paginator = ctx.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=ctx.bucket, Prefix=ctx.kp):
            for o in page.get("Contents", ()):
                lm = o.get("LastModified")
                lm_text = lm.isoformat() if hasattr(lm, "isoformat") else str(lm or "")
                out[o["Key"]] = (int(o.get("Size", 0)), _etag(o.get("ETag")), lm_text)
            if runner.poll_stop():
                break
            runner.report()
    except Exception as exc:
        raise _bucket_level_error(exc, ctx, doing) from exc
    return out


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


class _Puller:
    def __init__(self, ctx, delete, progress, should_stop, workers) -> None:
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

    def _path(self, rel: str) -> str:
        return os.path.join(self.rootp, rel)

    def run(self) -> SyncStats:
        ctx, runner = self.ctx, self.runner
        self._prepare_root()
        self.manifest = _Manifest.load(ctx, "pull")
        self.push_manifest = _Manifest.load(ctx, "push")
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
        runner.set_saver(self._save)
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

    def _save(self) -> None:
        self.manifest.save()
        if not self.push_manifest.foreign:  # seed the push manifest for the same prefix
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
            runner.fail(
                rel,
                f"object '{files[rel].key}' is a file but other objects use '{rel}/' as a "
                "directory; only the directory is pulled",
            )
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

        small: list[_PullItem] = []
        large: list[_PullItem] = []
        for item in sorted([*markers.values(), *files.values()], key=lambda i: i.key):
            problem = self._bad_parent(item.rel)
            if problem:
                runner.fail(item.rel, problem)
                continue
            decision = self._plan(item)
            if decision != "get":
                stats.files_skipped += 1
                continue
            (large if item.size >= MULTIPART_THRESHOLD else small).append(item)
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

        runner.run_pool(small, self._pull_small, self._on_done)
        runner.run_serial(large, self._pull_large, self._on_done)

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
        path = self._path(d)
        try:
            st = _lstat(path)
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
            os.mkdir(path)
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
        path = self._path(item.rel)
        st = _lstat(path)
        remote_same = (
            m is not None
            and m.get("etag") == item.etag
            and m.get("size") == item.size
            # a metadata-only change (chmod, touch) re-uploads the same bytes: same
            # ETag, new LastModified.  Entries seeded by a push have no "lm".
            and m.get("lm") in (None, item.lm)
        )
        local_same = m is not None and _local_matches(m, st, path)
        if remote_same and local_same:
            seeded = dict(m)
            seeded.pop("lm", None)
            self.push_manifest.entries[item.key] = seeded
            return "skip"
        if item.marker or st is None or stat.S_ISDIR(st.st_mode) or local_same:
            return "get"
        if remote_same:
            self.kept.append(item.rel)
            return "keep"
        item.preserve = True
        return "get"

    def _known_synced(self, key: str, st: os.stat_result | None, path: str) -> bool:
        """Is the local object exactly what an earlier sync recorded (so not unsynced work)?"""
        m = self.old_entries.get(key)
        return m is not None and _local_matches(m, st, path)

    def _preserve(self, rel: str) -> None:
        """Move local ``rel`` out of the tree instead of destroying it."""
        src = self._path(rel)
        dest = self.preserve_root / rel
        with self._preserve_lock:
            dest.parent.mkdir(parents=True, exist_ok=True)
            if os.path.lexists(dest):
                dest = dest.with_name(f"{dest.name}.{secrets.token_hex(3)}")
            self.preserved.append(rel)
        try:
            os.rename(src, dest)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            shutil.move(src, dest)  # local_dir is a mount point: copy, then remove

    def _remove(self, rel: str, key: str) -> None:
        """Remove a local file/symlink, preserving it unless a sync recorded exactly it."""
        path = self._path(rel)
        if self._known_synced(key, _lstat(path), path):
            os.unlink(path)
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

    def _pull_small(self, item: _PullItem) -> _Done:
        if self.runner.cancel_event.is_set():
            raise _Interrupted()
        s3, ctx = self.ctx.s3, self.ctx
        if item.marker:
            head = s3.head_object(Bucket=ctx.bucket, Key=item.key)
            return self._apply_dir_marker(item, head)
        for attempt in range(1, _STREAM_ATTEMPTS + 1):
            resp = s3.get_object(Bucket=ctx.bucket, Key=item.key)
            try:
                return self._write_response(item, resp)
            except (*_STREAM_ERRORS, _ShortRead) as exc:
                if attempt == _STREAM_ATTEMPTS or self.runner.cancel_event.is_set():
                    raise
                log.info("retrying download of %s after: %s", item.key, exc)
                time.sleep(0.2 * 2**attempt)
            finally:
                with contextlib.suppress(Exception):
                    resp["Body"].close()
        raise AssertionError("unreachable")

    def _pull_large(self, item: _PullItem) -> _Done:
        ctx, runner = self.ctx, self.runner
        head = ctx.s3.head_object(Bucket=ctx.bucket, Key=item.key)
        meta = head.get("Metadata") or {}
        if META_SYMLINK in meta:  # a huge symlink object? fall back to the simple path
            return self._pull_small(item)
        size = int(head["ContentLength"])
        etag = _etag(head.get("ETag"))
        parent = os.path.dirname(self._path(item.rel))
        tmp = os.path.join(parent, _new_tmp_name())
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666
        )
        f = os.fdopen(fd, "wb")
        try:
            fut = runner.tm.download(
                ctx.bucket,
                item.key,
                f,
                subscribers=[_Subscriber(size, etag, runner.add_inflight_bytes)],
            )
            runner.wait_transfer(fut)
            f.flush()
            got = os.fstat(fd).st_size
            if got != size:
                raise _ShortRead(f"downloaded {got} bytes but the object has {size}")
            self._finish_file(fd, meta, head.get("LastModified"))
            f.close()
            self._place(tmp, item)
        except BaseException:
            f.close()
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        st = os.lstat(self._path(item.rel))
        return _Done(item.key, _entry_from_stat("f", size, etag, st, None), True, size)

    def _apply_dir_marker(self, item: _PullItem, head: dict) -> _Done:
        meta = head.get("Metadata") or {}
        mode = _parse_mode(meta.get(META_MODE))
        mtime = _parse_mtime(meta.get(META_MTIME))
        # _ensure_dir made it a real directory; O_NOFOLLOW|O_DIRECTORY makes sure
        fd = os.open(
            self._path(item.rel), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        )
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

    def _write_response(self, item: _PullItem, resp: dict) -> _Done:
        cancel = self.runner.cancel_event
        meta = resp.get("Metadata") or {}
        etag = _etag(resp.get("ETag")) or item.etag
        length = int(resp.get("ContentLength", item.size))
        body = resp["Body"]
        path = self._path(item.rel)
        parent = os.path.dirname(path)
        tmp = os.path.join(parent, _new_tmp_name())
        if META_SYMLINK in meta:
            while body.read(_IO_CHUNK):  # normally empty; never buffer a huge body
                pass
            target = _decode_target(meta[META_SYMLINK])
            os.symlink(target, tmp)
            try:
                mtime = _parse_mtime(meta.get(META_MTIME))
                if mtime is not None:
                    os.utime(tmp, ns=(mtime, mtime), follow_symlinks=False)
                self._place(tmp, item)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            st = os.lstat(path)
            return _Done(item.key, _entry_from_stat("l", length, etag, st, target), True, 0)

        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666
        )
        try:
            written = 0
            while True:
                if cancel.is_set():
                    raise _Interrupted()
                chunk = body.read(_IO_CHUNK)
                if not chunk:
                    break
                view = memoryview(chunk)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                written += len(chunk)
            if written != length:
                raise _ShortRead(f"received {written} bytes but the object has {length}")
            self._finish_file(fd, meta, resp.get("LastModified"))
            os.close(fd)
            fd = -1
            self._place(tmp, item)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        st = os.lstat(path)
        return _Done(item.key, _entry_from_stat("f", length, etag, st, None), True, length)

    @staticmethod
    def _finish_file(fd: int, meta: dict, last_modified: Any) -> None:
        mode = _parse_mode(meta.get(META_MODE))
        if mode is not None:
            os.fchmod(fd, mode & 0o777)  # never setuid/setgid
        mtime = _parse_mtime(meta.get(META_MTIME))
        if mtime is None and last_modified is not None:
            with contextlib.suppress(AttributeError, OverflowError, ValueError):
                mtime = int(Decimal(str(last_modified.timestamp())) * 1_000_000_000)
        os.fsync(fd)
        if mtime is not None:
            os.utime(fd, ns=(mtime, mtime))

    def _place(self, tmp: str, item: _PullItem) -> None:
        """Atomically move ``tmp`` to ``item.rel``, replacing what is in the way if allowed."""
        rel = item.rel
        path = self._path(rel)
        if item.preserve and os.path.lexists(path):
            self._preserve(rel)
        try:
            os.replace(tmp, path)
            return
        except OSError as exc:
            if exc.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise
        st = _lstat(path)
        if st is None or not stat.S_ISDIR(st.st_mode):
            os.replace(tmp, path)
            return
        if self.delete:
            self._preserve(rel)  # never rmtree: the directory may hold unsynced work
        else:
            try:
                os.rmdir(path)
            except OSError:
                raise _FileProblem(
                    f"a local directory is in the way of the remote file '{rel}' (not removed "
                    "because delete=False and it is not empty)"
                ) from None
        self.runner.stats.files_deleted += 1
        os.replace(tmp, path)

    # -- cleanup / delete ---------------------------------------------------

    def _cleanup_local(self, files: dict[str, _PullItem], dirs: set[str]) -> None:
        runner, stats = self.runner, self.runner.stats
        try:
            local, errors, tmpfiles = _scan_local(self.root, (), one_fs=True)
        except OSError as exc:
            runner.fail(".", f"cannot scan the local directory: {exc.strerror}")
            return
        for rel in tmpfiles:  # leftovers of an interrupted pull: never user data
            with contextlib.suppress(OSError):
                os.unlink(self._path(rel))
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
            path = self._path(e.rel)
            try:
                if e.kind == "d":
                    if e.rel in dirs:
                        continue
                    os.rmdir(path)
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
class _PushItem:
    key: str
    rel: str
    local: _LocalEntry
    head_first: bool  # no manifest entry but the remote size matches: compare metadata


class _Pusher:
    def __init__(self, ctx, delete, excludes, progress, should_stop, workers) -> None:
        self.ctx: _Ctx = ctx
        self.rootp = os.fspath(ctx.local_dir)
        self.delete = delete
        self.excludes: tuple[str, ...] = excludes
        self.runner = _Runner(ctx, progress, should_stop, workers, "uploading to")
        self.protected: set[str] = set()  # keys that must not be deleted remotely

    def _path(self, rel: str) -> str:
        return os.path.join(self.rootp, rel)

    def run(self) -> SyncStats:
        ctx = self.ctx
        try:
            st = os.stat(self.rootp)
        except OSError as exc:
            raise StorageError(
                f"Cannot push {ctx.local_dir} to {ctx.where}: the local directory cannot be "
                f"read ({exc.strerror}). Nothing was uploaded or deleted.",
                bucket=ctx.bucket,
                prefix=ctx.prefix,
            ) from exc
        if not stat.S_ISDIR(st.st_mode):
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
        # Evidence that local_dir really is a copy of this prefix (a pull happened, or a
        # push completed); without it, delete=True refuses to delete anything remotely.
        self.had_record = self.pull_manifest.found or (
            self.manifest.found and self.manifest.complete
        )
        self.runner.set_saver(self._save)
        try:
            self._run()
        finally:
            try:
                self.runner.close()
            finally:
                self._save()
        return self.runner.finish("push")

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
            local, errors, _tmp = _scan_local(Path(self.rootp), self.excludes)
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

        small: list[_PushItem] = []
        large: list[_PushItem] = []
        for key in sorted(wanted):
            e = wanted[key]
            remote = listing.get(key)
            m = self.manifest.entries.get(key)
            if m is not None and remote is not None and self._unchanged(m, e, remote[:2]):
                stats.files_skipped += 1
                self._seed_pull_manifest(key, m)
                continue
            head_first = m is None and remote is not None and remote[0] == e.size
            item = _PushItem(key, e.rel, e, head_first)
            (large if e.kind == "f" and e.size >= MULTIPART_THRESHOLD else small).append(item)
        for key in [k for k in self.manifest.entries if k not in wanted]:
            rel = key[len(ctx.kp) :].rstrip("/")
            if not _is_excluded(rel, self.excludes):
                del self.manifest.entries[key]
        runner.report()

        runner.run_pool(small, self._push_one, self._on_done)
        runner.run_serial(large, self._push_one, self._on_done)

        if self.delete and not runner.stopping:
            self._delete_remote(listing, wanted)

    @staticmethod
    def _unchanged(m: dict, e: _LocalEntry, remote: tuple[int, str]) -> bool:
        if m.get("t") != e.kind or remote != (m.get("size"), m.get("etag")):
            return False
        if m.get("mtime_ns") != e.mtime_ns:
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

    def _push_one(self, item: _PushItem) -> _Done | None:
        if self.runner.cancel_event.is_set():
            raise _Interrupted()
        ctx, e = self.ctx, item.local
        s3 = ctx.s3
        if item.head_first:
            done = self._same_by_metadata(item)
            if done is not None:
                return done
        if e.kind == "f":
            return self._push_file(item)
        path = self._path(e.rel)
        st = _lstat(path)
        if st is None:
            return None
        if e.kind == "l":
            if not stat.S_ISLNK(st.st_mode):
                raise _Changed(f"'{e.rel}' is no longer a symlink")
            target = os.readlink(path)
            e = dataclasses.replace(e, target=target, mtime_ns=st.st_mtime_ns)
            resp = s3.put_object(
                Bucket=ctx.bucket, Key=item.key, Body=b"", Metadata=self._metadata(e, st)
            )
            entry = _entry_from_stat("l", 0, _etag(resp.get("ETag")), st, target)
            return _Done(item.key, entry, True, 0)
        # directory marker
        if not stat.S_ISDIR(st.st_mode):
            raise _Changed(f"'{e.rel}' is no longer a directory")
        resp = s3.put_object(
            Bucket=ctx.bucket,
            Key=item.key,
            Body=b"",
            Metadata=self._metadata(e, st),
            ContentType=DIRECTORY_CONTENT_TYPE,
        )
        return _Done(item.key, _entry_from_stat("d", 0, _etag(resp.get("ETag")), st, None), True, 0)

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
        st = _lstat(self._path(e.rel))
        if st is None or st.st_mtime_ns != e.mtime_ns or (e.kind == "f" and st.st_size != e.size):
            return None
        entry = _entry_from_stat(e.kind, e.size, _etag(head.get("ETag")), st, e.target)
        return _Done(item.key, entry, False, 0)

    def _push_file(self, item: _PushItem) -> _Done | None:
        ctx, runner = self.ctx, self.runner
        path = self._path(item.rel)
        for attempt in range(1, _CHANGE_ATTEMPTS + 1):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
            except FileNotFoundError:
                return None
            except OSError as exc:
                if exc.errno == errno.ELOOP:  # became a symlink since the scan
                    raise _Changed(
                        f"'{item.rel}' was replaced by a symlink during the push"
                    ) from None
                raise
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise _Changed(f"'{item.rel}' is no longer a regular file")
                size = st.st_size
                meta = self._metadata(item.local, st)
                try:
                    if size <= IN_MEMORY_UPLOAD_LIMIT:
                        data = f.read()
                        if not self._same_stat(st, os.fstat(fd)) or len(data) != size:
                            raise _Changed(f"'{item.rel}' changed while it was being read")
                        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
                        resp = ctx.s3.put_object(
                            Bucket=ctx.bucket,
                            Key=item.key,
                            Body=data,
                            ContentMD5=md5,
                            Metadata=meta,
                        )
                        etag = _etag(resp.get("ETag"))
                    elif size < MULTIPART_THRESHOLD or not runner.on_coordinator():
                        # (a worker thread only gets a large file if it grew since the scan)
                        resp = ctx.s3.put_object(
                            Bucket=ctx.bucket,
                            Key=item.key,
                            Body=f,
                            ContentLength=size,
                            Metadata=meta,
                        )
                        etag = _etag(resp.get("ETag"))
                    else:
                        fut = runner.tm.upload(
                            f,
                            ctx.bucket,
                            item.key,
                            extra_args={"Metadata": meta},
                            subscribers=[_Subscriber(size, None, runner.add_inflight_bytes)],
                        )
                        runner.wait_transfer(fut)
                        head = ctx.s3.head_object(Bucket=ctx.bucket, Key=item.key)
                        if int(head.get("ContentLength", -1)) != size:
                            raise _FileProblem(
                                f"after upload the object has {head.get('ContentLength')} bytes "
                                f"instead of {size}"
                            )
                        etag = _etag(head.get("ETag"))
                    if not self._same_stat(st, os.fstat(fd)):
                        raise _Changed(f"'{item.rel}' changed while it was being uploaded")
                except _Changed:
                    if attempt == _CHANGE_ATTEMPTS or runner.cancel_event.is_set():
                        raise
                    time.sleep(0.1 * attempt)
                    continue
                except Exception:
                    # a file modified mid-upload can make the server reject the body
                    # (e.g. signature/checksum mismatch): report that, not the symptom
                    if not self._same_stat(st, os.fstat(fd)):
                        if attempt == _CHANGE_ATTEMPTS:
                            raise _Changed(
                                f"'{item.rel}' changed while it was being uploaded"
                            ) from None
                        continue
                    raise
            entry = _entry_from_stat("f", size, etag, st, None)
            return _Done(item.key, entry, True, size)
        raise AssertionError("unreachable")

    @staticmethod
    def _same_stat(a: os.stat_result, b: os.stat_result) -> bool:
        return (a.st_size, a.st_mtime_ns, a.st_ino) == (b.st_size, b.st_mtime_ns, b.st_ino)

    # -- delete -------------------------------------------------------------

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
            rel = key[len(ctx.kp) :]
            if not rel or _is_excluded(rel.rstrip("/"), self.excludes):
                continue
            doomed.append(key)
        if doomed and not self.had_record:
            runner.fatal = StorageError(
                f"Refusing to delete {len(doomed)} object(s) under {ctx.where} that do not exist "
                f"in {ctx.local_dir}: there is no record that this directory was ever pulled "
                f"from (or completely pushed to) {ctx.where}, so it may simply be the wrong or "
                "an empty directory. Pull first, or push once with delete=False. Everything "
                "else was uploaded.",
                bucket=ctx.bucket,
                prefix=ctx.prefix,
            )
            return
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
