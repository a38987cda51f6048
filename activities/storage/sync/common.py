"""The context of one sync call and the small helpers pull and push share.

:class:`_Ctx` (client, bucket, normalised prefix, local directory, endpoint, and
the manifest paths), ``exclude`` handling, relative-path helpers, the encoding of
the object metadata (mode, mtime, symlink target), temporary names, and the
per-file exceptions the workers raise.
"""

from __future__ import annotations

import os
import random
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes, unquote_to_bytes

from botocore.exceptions import ClientError

from activities.storage.sync.constants import _TMP_PREFIX


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
