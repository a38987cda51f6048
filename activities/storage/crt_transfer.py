"""One CRT S3 request in flight (:class:`Transfer`) and how its failures read.

The CRT reports failures as its own error names; the sync's error mapping speaks
botocore (``ClientError``, ``EndpointConnectionError``), so a failed transfer carries
the botocore exception a boto3 call would have raised. Callbacks run on CRT threads.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import re
import threading
from collections.abc import Callable
from typing import Any
from xml.etree import ElementTree

from awscrt.exceptions import AwsCrtError
from botocore.exceptions import ClientError, EndpointConnectionError

__all__ = ["FD_PATH", "CrtCancelled", "CrtFileError", "FdReader", "Transfer"]

# CRT error names that mean the endpoint could not be reached at all.
_CONNECT_ERRORS = re.compile(
    r"CONNECTION_REFUSED|HOST_UNREACHABLE|NETWORK_UNREACHABLE|DNS|NO_ADDRESS|"
    r"SOCKET_TIMEOUT|CONNECT_TIMEOUT|ADDRESS_FAMILY|NO_ROUTE|CONNECTION_ABORTED"
)
_IO_ERRORS = re.compile(
    r"SOCKET|CONNECTION|HTTP|TLS|TIMEOUT|BROKEN_PIPE|STREAM|NETWORK|IO_EOF|"
    r"S3_INTERNAL_ERROR|S3_SLOW_DOWN|S3_REQUEST_TIME_TOO_SKEWED|S3_INVALID_RESPONSE"
)


class CrtCancelled(Exception):
    """The request was cancelled (``Transfer.cancel()``)."""


class CrtFileError(OSError):
    """The CRT could not read the local file it was asked to upload."""


class Transfer:
    """One in-flight request.  ``finished`` is True once the result fields are final."""

    __slots__ = (
        "_body_error",
        "_cancelled",
        "_engine_endpoint",
        "_on_done",
        "_request",
        "body_bytes",
        "context",
        "error",
        "fd",
        "finished",
        "headers",
        "status",
    )

    def __init__(self, context: Any, fd: int | None, on_done: Callable[[Transfer], None]) -> None:
        self._request: Any = None
        self._cancelled = False
        self.context = context
        self.fd = fd
        self.finished = False
        self.error: BaseException | None = None
        self.headers: dict[str, str] = {}
        self.status: int | None = None
        self.body_bytes = 0
        self._on_done = on_done
        self._body_error: BaseException | None = None
        self._engine_endpoint = ""

    def cancel(self) -> None:
        self._cancelled = True
        req = self._request
        if req is not None and not self.finished:
            with contextlib.suppress(Exception):
                req.cancel()

    # -- CRT callbacks (CRT threads) ----------------------------------------

    def _headers(self, status_code: int, headers: list[tuple[str, str]], **kwargs: Any) -> None:
        _pin_thread_state()
        self.status = status_code
        self.headers = {k.lower(): v for k, v in headers}

    def _body(self, chunk: Any, offset: int, **kwargs: Any) -> None:
        if self._body_error is not None:
            return
        try:
            view = memoryview(chunk)
            pos = offset
            while view:
                n = os.pwrite(self.fd, view, pos)  # type: ignore[arg-type]
                view = view[n:]
                pos += n
            self.body_bytes += len(chunk)
        except BaseException as exc:  # e.g. disk full: stop the request, report it
            self._body_error = exc
            req = self._request
            if req is not None:
                with contextlib.suppress(Exception):
                    req.cancel()

    def _done(self, error: BaseException | None = None, **kwargs: Any) -> None:
        _pin_thread_state()
        status = kwargs.get("status_code")
        if status is not None and self.status is None:
            self.status = status
        if self._body_error is not None:
            self.error = self._body_error
        elif error is not None:
            self.error = _convert_error(
                error,
                status,
                kwargs.get("error_headers"),
                kwargs.get("error_body"),
                kwargs.get("error_operation_name"),
                self._engine_endpoint,
                self._cancelled,
            )
        self.finished = True
        try:
            self._on_done(self)
        finally:
            self._request = None  # break the reference cycle with the native request


FD_PATH = re.compile(r"/proc/self/fd/[0-9]+")


class FdReader(io.RawIOBase):
    """An already open file as a body stream, read with ``pread`` from offset 0 (never
    reopened by path, the caller's descriptor left open and its offset untouched)."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            self._pos = offset
        elif whence == io.SEEK_CUR:
            self._pos += offset
        else:
            self._pos = os.fstat(self._fd).st_size + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buf: Any) -> int:
        data = os.pread(self._fd, len(buf), self._pos)
        n = len(data)
        buf[:n] = data
        self._pos += n
        return n

    def close(self) -> None:  # the descriptor is the caller's
        super().close()


_pinned_threads: set[int] = set()


def _pin_thread_state() -> None:
    """Keep a Python thread state alive on this CRT thread for its whole life.

    Each callback from a native thread otherwise creates and destroys a thread
    state (PyGILState_Ensure/Release), which on Python 3.11 also maps and unmaps
    a 16 KiB frame stack: three mmap/munmap pairs (with TLB shootdowns across
    the CRT's threads) per request, the largest system-time cost of pulling
    many small files.  One extra Ensure, never released, makes the state
    permanent; the CRT's event-loop threads live as long as the process.
    """
    tid = threading.get_ident()
    if tid not in _pinned_threads:
        _pinned_threads.add(tid)
        ctypes.pythonapi.PyGILState_Ensure()


def _convert_error(
    error: BaseException,
    status: int | None,
    headers: list[tuple[str, str]] | None,
    body: bytes | None,
    operation: str | None,
    endpoint: str,
    cancelled: bool,
) -> BaseException:
    name = getattr(error, "name", "") or type(error).__name__
    if cancelled or name == "AWS_ERROR_S3_CANCELED":
        return CrtCancelled(name)
    if status is not None and status >= 300:
        code, message = str(status), ""
        if body:
            with contextlib.suppress(ElementTree.ParseError, ValueError):
                root = ElementTree.fromstring(body)
                code = root.findtext("Code") or code
                message = root.findtext("Message") or ""
        hdrs = {k.lower(): v for k, v in headers or ()}
        if status == 404 and not body and operation in ("HeadObject", "GetObject"):
            code = "404"
        response = {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": hdrs},
        }
        return ClientError(response, operation or "S3Request")
    if _CONNECT_ERRORS.search(name):
        return EndpointConnectionError(endpoint_url=f"{endpoint} ({name})")
    if "FILE" in name or "NO_PERMISSION" in name or name.startswith("AWS_ERROR_S3_INCORRECT"):
        return CrtFileError(f"{name}: {getattr(error, 'message', error)}")
    if _IO_ERRORS.search(name):
        return ConnectionError(f"{name}: {getattr(error, 'message', error)}")
    return error if isinstance(error, AwsCrtError) else ConnectionError(str(error))
