"""Walking the local tree and comparing local files with manifest records and objects.

:func:`_scan_local` lists the tree beneath its root without following symlinks;
the other helpers decide whether a local file is the one a record describes, holds
an object's bytes (by ETag), or whether a listed object is the recorded version,
and build manifest entries from a stat.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass

from activities.storage.beneath import Tree, swapped
from activities.storage.sync.common import _is_excluded, _parents
from activities.storage.sync.constants import _TMP_RE, MiB

log = logging.getLogger(__name__)


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
