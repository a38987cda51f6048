"""Errors raised by the storage layer (see :mod:`activities.storage.sync`).

The hierarchy is deliberately small so that workflows can decide what to do
from the type alone:

* :class:`StorageAccessError` -- the user's data cannot be read or written
  because of how the storage is set up (missing bucket, wrong or missing
  credentials, permission denied).  Retrying will not help until someone fixes
  the configuration.
* :class:`StorageUnavailableError` -- the storage service could not be reached
  or is overloaded (connection refused/reset, timeouts, 5xx, SlowDown).  Worth
  retrying later.
* :class:`SyncCancelled` -- the caller asked the sync to stop.
* :class:`StorageError` -- anything else, e.g. some files could not be
  transferred.  A sync that raises did *not* complete.
"""

from __future__ import annotations

from typing import Any


class StorageError(Exception):
    """Base class for storage failures.

    ``str(error)`` is a complete, human readable sentence naming the bucket and
    prefix involved.  The structured fields are there for logs and callers that
    want them; all of them are optional.
    """

    retryable: bool = True

    def __init__(
        self,
        message: str,
        *,
        bucket: str | None = None,
        prefix: str | None = None,
        code: str | None = None,
        stats: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.bucket = bucket
        self.prefix = prefix
        self.code = code
        #: The :class:`~activities.storage.sync.SyncStats` of the sync that failed, if any.
        self.stats = stats

    def __str__(self) -> str:
        return self.message


class StorageAccessError(StorageError):
    """The bucket/prefix cannot be used with the configured credentials.

    Raised for NoSuchBucket, AccessDenied, InvalidAccessKeyId,
    SignatureDoesNotMatch, missing credentials and 403/404 answers about the
    bucket.  Not worth retrying until the configuration is fixed.
    """

    retryable = False


class StorageUnavailableError(StorageError):
    """The storage endpoint could not be reached or is temporarily failing.

    Raised for connection errors, timeouts, HTTP 5xx and throttling
    (SlowDown).  Worth retrying.
    """

    retryable = True


class SyncCancelled(StorageError):
    """The sync was stopped because ``should_stop()`` returned True.

    Everything transferred before the stop is recorded in the sync manifest, so
    the next sync resumes where this one stopped.
    """

    retryable = False
