"""Object data transfers through the AWS Common Runtime (``awscrt``) S3 client.

boto3 spends most of its time in Python (signing, parsing, threads): it tops
out near a few hundred requests per second per process.  The CRT S3 client
does signing, connection pooling, retries and multipart splitting in native
code on its own event-loop threads, so thousands of small objects per second
and multi-GiB files at disk speed are possible from one Python thread.

:class:`CrtEngine` is a thin, asynchronous wrapper used by
:mod:`activities.storage.sync`:

* an engine is derived from a boto3 S3 client (endpoint, region, credentials,
  TLS verification, timeouts, retries) and cached per process;
* every call starts one request and returns a :class:`Transfer` at once; its
  ``on_done`` callback runs on a CRT thread (keep it tiny: put the transfer on
  a queue and do the real work on the caller's thread);
* a failed transfer carries an exception of the *botocore* family
  (``ClientError``, ``EndpointConnectionError`` ...) so the sync's existing
  error mapping applies unchanged; a cancelled one carries
  :class:`CrtCancelled`;
* downloads are written through a file descriptor owned by the caller
  (``on_body`` -> ``os.pwrite``), so the caller controls how the file is
  opened (``O_EXCL|O_NOFOLLOW`` temporary file) and when it is fsynced; the
  CRT buffers at most ``memory_limit`` bytes in total, whatever the file
  sizes.
"""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote, urlsplit

from awscrt import auth, http, s3
from awscrt import io as crt_io
from botocore.exceptions import NoCredentialsError

from activities.storage.crt_listing import parse_list_page
from activities.storage.crt_transfer import (
    FD_PATH,
    CrtCancelled,
    CrtFileError,
    FdReader,
    Transfer,
)

__all__ = ["CrtCancelled", "CrtEngine", "CrtFileError", "Transfer"]

MiB = 1024 * 1024

#: Part size of multipart uploads and ranged downloads.
PART_SIZE = 8 * MiB
#: Upper bound of the memory the CRT may use for part buffers (per engine).
MEMORY_LIMIT = 256 * MiB  # the minimum the CRT accepts

_LIST_PAGE = 1000


def _event_loop_threads() -> int:
    """How many CRT event-loop threads to run: the usable CPUs but one, from 1 to 4.

    The Python thread that drives a sync (opening, stat-ing and renaming each file)
    needs a CPU of its own.  On two CPUs a second event-loop thread only competed with
    it: pulling 20,000 small files took 12.4-13.9 s of CPU with one thread against
    15.6-17.0 s with two, and large transfers were as fast with one.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 2
    return max(1, min(4, cpus - 1))


class CrtEngine:
    """A CRT S3 client for one endpoint/region/credential set (thread-safe)."""

    _cache: OrderedDict[tuple, CrtEngine] = OrderedDict()
    _cache_lock = threading.Lock()
    _elg: Any = None
    _bootstrap: Any = None
    _CACHE_SIZE = 8

    def __init__(
        self,
        endpoint: str,
        region: str,
        access_key: str,
        secret_key: str,
        token: str | None,
        *,
        verify: bool | str = True,
        connect_timeout_ms: int | None = None,
        max_retries: int = 3,
        part_size: int = PART_SIZE,
    ) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"unsupported S3 endpoint URL {endpoint!r}")
        self.endpoint = endpoint
        self.host = parts.netloc.rpartition("@")[2]
        self.base_path = parts.path.rstrip("/")
        self.region = region
        self.part_size = part_size
        tls_mode = s3.S3RequestTlsMode.DISABLED
        tls_options = None
        if parts.scheme == "https":
            tls_mode = s3.S3RequestTlsMode.ENABLED
            opts = crt_io.TlsContextOptions()
            if verify is False:
                opts.verify_peer = False
            elif isinstance(verify, str):
                if os.path.isdir(verify):
                    opts.override_default_trust_store_from_path(ca_dirpath=verify)
                else:
                    opts.override_default_trust_store_from_path(ca_filepath=verify)
            tls_options = crt_io.ClientTlsContext(opts).new_connection_options()
            tls_options.set_server_name(parts.hostname)
        creds = auth.AwsCredentialsProvider.new_static(access_key, secret_key, token)
        signing = s3.create_default_s3_signing_config(region=region, credential_provider=creds)
        retry = (
            s3.S3RetryConfig(max_retries=max_retries, backoff_scale_factor_ms=200)
            if max_retries > 0
            else s3.S3RetryConfig(retry_mode=s3.S3RetryMode.NONE)
        )
        self.client = s3.S3Client(
            bootstrap=self._get_bootstrap(),
            region=region,
            signing_config=signing,
            tls_mode=tls_mode,
            tls_connection_options=tls_options,
            part_size=part_size,
            multipart_upload_threshold=max(part_size, 5 * MiB),
            throughput_target_gbps=10.0,
            memory_limit=MEMORY_LIMIT,
            retry_config=retry,
            connect_timeout_ms=connect_timeout_ms,
        )

    # -- construction --------------------------------------------------------

    @classmethod
    def _get_bootstrap(cls) -> Any:
        if cls._bootstrap is None:
            cls._elg = crt_io.EventLoopGroup(_event_loop_threads())
            resolver = crt_io.DefaultHostResolver(cls._elg)
            cls._bootstrap = crt_io.ClientBootstrap(cls._elg, resolver)
        return cls._bootstrap

    @classmethod
    def for_client(cls, boto_client: Any) -> CrtEngine:
        """The engine matching a boto3 S3 client's endpoint, region and credentials.

        A client object may instead carry ``crt_settings`` (a dict with endpoint,
        region, access_key, secret_key, token, verify, connect_timeout_ms,
        max_retries), e.g. a lazily created client that should not be built
        just to derive them.
        """
        settings = getattr(boto_client, "crt_settings", None)
        if isinstance(settings, dict):
            return cls._cached(dict(settings))
        meta = boto_client.meta
        endpoint = meta.endpoint_url
        region = meta.region_name or "us-east-1"
        signer = getattr(boto_client, "_request_signer", None)
        creds = getattr(signer, "_credentials", None)
        if creds is None:
            raise NoCredentialsError()
        frozen = creds.get_frozen_credentials()
        if not frozen.access_key or not frozen.secret_key:
            raise NoCredentialsError()
        config = meta.config
        verify: bool | str = True
        endpoint_obj = getattr(boto_client, "_endpoint", None)
        session = getattr(endpoint_obj, "http_session", None)
        if session is not None and hasattr(session, "_verify"):
            verify = session._verify if session._verify is not None else True
        connect_timeout = getattr(config, "connect_timeout", None)
        connect_ms = int(connect_timeout * 1000) if connect_timeout else None
        attempts = (getattr(config, "retries", None) or {}).get("max_attempts")
        if attempts is None:
            attempts = (getattr(config, "retries", None) or {}).get("total_max_attempts", 4) - 1
        max_retries = max(int(attempts) - 1, 0) if attempts is not None else 3
        return cls._cached(
            {
                "endpoint": endpoint,
                "region": region,
                "access_key": frozen.access_key,
                "secret_key": frozen.secret_key,
                "token": frozen.token,
                "verify": verify,
                "connect_timeout_ms": connect_ms,
                "max_retries": max_retries,
            }
        )

    @classmethod
    def _cached(cls, s: dict) -> CrtEngine:
        if not s.get("access_key") or not s.get("secret_key"):
            raise NoCredentialsError()
        if not s.get("endpoint"):
            s["endpoint"] = f"https://s3.{s.get('region') or 'us-east-1'}.amazonaws.com"
        key = tuple(sorted((k, str(v)) for k, v in s.items()))
        with cls._cache_lock:
            engine = cls._cache.get(key)
            if engine is not None:
                cls._cache.move_to_end(key)
                return engine
            engine = cls(
                s["endpoint"],
                s.get("region") or "us-east-1",
                s["access_key"],
                s["secret_key"],
                s.get("token"),
                verify=s.get("verify", True),
                connect_timeout_ms=s.get("connect_timeout_ms"),
                max_retries=int(s.get("max_retries", 3)),
            )
            cls._cache[key] = engine
            while len(cls._cache) > cls._CACHE_SIZE:
                cls._cache.popitem(last=False)
            return engine

    # -- requests ------------------------------------------------------------

    def _path(self, bucket: str, key: str = "", query: str = "") -> str:
        path = f"{self.base_path}/{quote(bucket, safe='')}"
        if key:
            path += "/" + quote(key, safe="/~")
        return path + (f"?{query}" if query else "")

    def _start(
        self,
        transfer: Transfer,
        kind: Any,
        method: str,
        path: str,
        headers: list[tuple[str, str]],
        *,
        body: bytes | None = None,
        body_stream: Any = None,
        send_filepath: str | None = None,
        recv_filepath: str | None = None,
        operation: str | None = None,
        on_progress: Callable[[int], None] | None = None,
        on_body: bool = False,
        fio_options: Any = None,
    ) -> Transfer:
        transfer._engine_endpoint = self.endpoint
        # The CRT opens files by path itself: only ever give it /proc/self/fd/N of a
        # descriptor the caller opened safely (a path could be a symlink by then).
        for p in (send_filepath, recv_filepath):
            if p is not None and not FD_PATH.fullmatch(p):
                raise ValueError(f"the CRT only gets /proc/self/fd/N paths, not {p!r}")
        hdrs = http.HttpHeaders([("Host", self.host), *headers])
        stream = io.BytesIO(body) if body is not None else body_stream
        request = http.HttpRequest(method, path, hdrs, stream)
        kwargs: dict[str, Any] = {}
        if operation is not None:
            kwargs["operation_name"] = operation
        if on_progress is not None:
            kwargs["on_progress"] = lambda progress, **kw: on_progress(progress)
        if on_body:
            kwargs["on_body"] = transfer._body
        if recv_filepath is not None:
            kwargs["recv_filepath"] = recv_filepath
        if fio_options is not None:
            kwargs["fio_options"] = fio_options
        transfer._request = self.client.make_request(
            type=kind,
            request=request,
            send_filepath=send_filepath,
            on_headers=transfer._headers,
            on_done=transfer._done,
            **kwargs,
        )
        if transfer._cancelled:
            transfer.cancel()
        return transfer

    def get(
        self,
        bucket: str,
        key: str,
        fd: int,
        on_done: Callable[[Transfer], None],
        *,
        context: Any = None,
        on_progress: Callable[[int], None] | None = None,
        expected_size: int = 0,
        recv_filepath: str | None = None,
    ) -> Transfer:
        """GET an object, writing its body into ``fd`` with ``pwrite`` (any size).

        ``expected_size`` (from the listing) picks the strategy: objects smaller
        than a part are fetched with one plain GET (no Range header: some servers
        answer ranged GETs of empty objects with 416), larger ones with parallel
        ranged GETs.  With ``recv_filepath`` (e.g. ``/proc/self/fd/N`` of ``fd``)
        the CRT writes the file natively instead (no Python per chunk).
        """
        t = Transfer(context, fd, on_done)
        if expected_size < self.part_size:
            return self._start(
                t,
                s3.S3RequestType.DEFAULT,
                "GET",
                self._path(bucket, key),
                [],
                operation="GetObject",
                on_progress=on_progress,
                on_body=recv_filepath is None,
                recv_filepath=recv_filepath,
            )
        return self._start(
            t,
            s3.S3RequestType.GET_OBJECT,
            "GET",
            self._path(bucket, key),
            [],
            on_progress=on_progress,
            on_body=recv_filepath is None,
            recv_filepath=recv_filepath,
            # Large downloads bypass the page cache: the pull makes every file durable
            # before it counts, and buffered writes would only fill memory with dirty
            # pages for the fsync to wait on (and push out other users' cache).  Best
            # effort: the CRT falls back to buffered writes where O_DIRECT is refused.
            fio_options=s3.S3FileIoOptions(direct_io=True) if recv_filepath else None,
        )

    def head(
        self, bucket: str, key: str, on_done: Callable[[Transfer], None], *, context: Any = None
    ) -> Transfer:
        t = Transfer(context, None, on_done)
        return self._start(
            t, s3.S3RequestType.DEFAULT, "HEAD", self._path(bucket, key), [], operation="HeadObject"
        )

    def put(
        self,
        bucket: str,
        key: str,
        headers: list[tuple[str, str]],
        on_done: Callable[[Transfer], None],
        *,
        size: int,
        body: bytes | None = None,
        send_filepath: str | None = None,
        body_fd: int | None = None,
        context: Any = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> Transfer:
        """PUT an object from memory (``body``) or from a file (multipart when large):
        ``send_filepath`` (``/proc/self/fd/N`` only) or, where there is no ``/proc``,
        ``body_fd`` (read from its start as a stream; the caller keeps it open)."""
        t = Transfer(context, None, on_done)
        hdrs = [("Content-Length", str(size)), *headers]
        if not any(k.lower() == "content-type" for k, _ in headers):
            hdrs.append(("Content-Type", "application/octet-stream"))
        return self._start(
            t,
            s3.S3RequestType.PUT_OBJECT,
            "PUT",
            self._path(bucket, key),
            hdrs,
            body=body if send_filepath is None and body_fd is None else None,
            body_stream=None if body_fd is None else FdReader(body_fd),
            send_filepath=send_filepath,
            on_progress=on_progress,
        )

    # -- listing -------------------------------------------------------------

    def list_all(
        self,
        bucket: str,
        prefix: str,
        *,
        parallel: int = 8,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[tuple[str, int, str, str]]:
        """Every object under ``prefix``: [(key, size, etag, last-modified text)].

        Lists the top level with ``delimiter='/'`` first, then each top-level
        "directory" on its own, ``parallel`` at a time: the server's work per
        page is the slow part, and it overlaps.  Falls back to one sequential
        listing when there are very many top-level prefixes.
        """
        out: list[tuple[str, int, str, str]] = []
        subs: list[str] = []
        for objects, prefixes in self.list_pages(bucket, prefix, delimiter="/"):
            out.extend(objects)
            subs.extend(prefixes)
            if len(subs) > 256:
                break
        if len(subs) > 256:  # too many requests: one plain listing is cheaper
            out = []
            for objects, _ in self.list_pages(bucket, prefix):
                out.extend(objects)
                if should_stop is not None and should_stop():
                    break
            return out
        if not subs:
            return out
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        def one(sub: str) -> list[tuple[str, int, str, str]]:
            got: list[tuple[str, int, str, str]] = []
            for objects, _ in self.list_pages(bucket, sub):
                got.extend(objects)
            return got

        with ThreadPoolExecutor(max(1, min(parallel, len(subs)))) as pool:
            futures = {pool.submit(one, sub) for sub in subs}
            try:
                while futures:
                    done, futures = wait(futures, timeout=0.05, return_when=FIRST_COMPLETED)
                    for fut in done:
                        out.extend(fut.result())
                    if should_stop is not None and should_stop():
                        break
            finally:
                for fut in futures:
                    fut.cancel()
        return out

    def list_pages(
        self, bucket: str, prefix: str, *, delimiter: str | None = None
    ) -> Iterator[tuple[list[tuple[str, int, str, str]], list[str]]]:
        """ListObjectsV2, page by page: ([(key, size, etag, last-modified text)], [prefixes]).

        Parses the XML directly (much cheaper than botocore's parser).  Raises
        botocore-style exceptions like boto3 would.
        """
        token: str | None = None
        while True:
            params = [("list-type", "2"), ("encoding-type", "url"), ("max-keys", str(_LIST_PAGE))]
            if prefix:
                params.append(("prefix", prefix))
            if delimiter:
                params.append(("delimiter", delimiter))
            if token:
                params.append(("continuation-token", token))
            query = "&".join(f"{k}={quote(v, safe='-_.~')}" for k, v in sorted(params))
            chunks: list[bytes] = []
            finished = threading.Event()

            def on_done(_t: Transfer, finished: threading.Event = finished) -> None:
                finished.set()

            t = Transfer(None, None, on_done)

            def on_body(chunk: Any, offset: int, chunks: list = chunks, **kw: Any) -> None:
                chunks.append(bytes(chunk))

            t._engine_endpoint = self.endpoint
            hdrs = http.HttpHeaders([("Host", self.host)])
            request = http.HttpRequest("GET", self._path(bucket, query=query), hdrs)
            t._request = self.client.make_request(
                type=s3.S3RequestType.DEFAULT,
                operation_name="ListObjectsV2",
                request=request,
                on_headers=t._headers,
                on_body=on_body,
                on_done=t._done,
            )
            finished.wait()
            if t.error is not None:
                raise t.error
            objects, prefixes, truncated, token = parse_list_page(b"".join(chunks))
            yield objects, prefixes
            if not truncated or not token:
                return
