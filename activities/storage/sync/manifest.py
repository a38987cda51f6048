"""The JSON manifests next to a synced directory, and the lock that serialises syncs.

:class:`_Manifest` records, per key, the object and the local file as they were when
known to be identical (``.{name}.manifest.json`` for pull, ``.{name}.push-manifest.json``
for push); saving rewrites only the header when the entries did not change.
:class:`_DirLock` holds ``.{name}.sync.lock`` for the duration of a sync.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from activities.storage.errors import StorageError
from activities.storage.sync.common import _Ctx
from activities.storage.sync.constants import _MANIFEST_VERSION

log = logging.getLogger(__name__)


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
