"""Mapping of S3, botocore and OS failures to :mod:`activities.storage.errors`.

Decides whether a failure stops the whole sync (bad credentials, missing bucket,
an overloaded service, a full disk: a :class:`StorageError` subclass with a message
meant for people) or only fails one file (``None``).  Also batch deletion of keys,
which falls back to one request per key, and the reading of refused conditional
requests.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Sequence

from botocore.exceptions import (
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
from botocore.exceptions import ConnectionError as BotoConnectionError

from activities.storage.errors import StorageAccessError, StorageError, StorageUnavailableError
from activities.storage.sync.common import _Ctx, _describe

log = logging.getLogger(__name__)


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
    if type(exc).__name__ == "RetriesExceededError" and (
        last := getattr(exc, "last_exception", None)
    ):
        mapped = _map_error(last, ctx, doing)
        if mapped is not None:
            return mapped
        return _unavailable(
            ctx,
            f"Repeated failures talking to {ctx.endpoint} while {doing} {ctx.where}: "
            f"{last}. Retry later.",
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
