"""A push must never put back a stale copy over someone else's newer write.

Two directories share one prefix, as two notebooks share an ``rw``/``rwd`` volume:
``mine`` is the tree under test, ``theirs`` is the other writer.  Each test
changes the prefix behind ``mine``'s back and checks what ``mine``'s next push
does with it (see docs/sync-conflicts.md for the rules)."""

from __future__ import annotations

import logging
import os
import time

import pytest
from botocore.exceptions import ClientError

from activities.storage import sync
from activities.storage.crt_engine import CrtEngine, Transfer
from activities.storage.errors import StorageError

try:
    from tests.integration.test_sync import (
        MTIME,
        bucket,
        keys,
        prefix,
        s3,
        seaweed,
        symlink,
        write,
    )
except ImportError:  # pragma: no cover - rootdir not on sys.path
    from test_sync import (  # type: ignore[no-redef]  # noqa: F401
        MTIME,
        bucket,
        keys,
        prefix,
        s3,
        seaweed,
        symlink,
        write,
    )

MiB = 1024 * 1024
PRESERVED = ".ainb-preserved/"
LATER = MTIME + 60 * 10**9


def body(s3, bucket: str, prefix: str, rel: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=f"{prefix}/{rel}")["Body"].read()


def preserved(s3, bucket: str, prefix: str) -> dict[str, bytes]:
    """The preserved copies, by relative key (the run directory left out)."""
    out = {}
    for rel in keys(s3, bucket, prefix):
        if rel.startswith(PRESERVED):
            run, _, key = rel[len(PRESERVED) :].partition("/")
            assert run.endswith("Z") or "Z-" in run, rel  # a UTC time stamp
            out[key] = body(s3, bucket, prefix, rel)
    return out


@pytest.fixture
def shared(s3, bucket, prefix, tmp_path):
    """``mine`` and ``theirs``, both pulled from a prefix holding a few files."""
    seed = tmp_path / "seed"
    write(seed / "x.txt", "v0")
    write(seed / "sub" / "y.txt", "y v0")
    write(seed / "z.txt", "z v0")
    symlink(seed / "link", "x.txt")
    sync.push(s3, seed, bucket, prefix)
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    sync.pull(s3, bucket, prefix, mine, delete=True)
    sync.pull(s3, bucket, prefix, theirs, delete=True)
    return mine, theirs


# --------------------------------------------------------------------------
# only the remote changed: it stays
# --------------------------------------------------------------------------


@pytest.mark.parametrize("delete", [False, True])
def test_unchanged_local_copy_never_reverts_a_newer_remote_write(
    s3, bucket, prefix, shared, delete
):
    mine, theirs = shared
    write(theirs / "x.txt", "their newer version", mtime_ns=LATER)
    write(theirs / "sub" / "y.txt", "their y", mtime_ns=LATER)
    sync.push(s3, theirs, bucket, prefix)

    stats = sync.push(s3, mine, bucket, prefix, delete=delete)  # mine changed nothing
    assert stats.files_done == 0 and stats.files_deleted == 0
    assert body(s3, bucket, prefix, "x.txt") == b"their newer version"
    assert body(s3, bucket, prefix, "sub/y.txt") == b"their y"
    assert preserved(s3, bucket, prefix) == {}

    # again: the decision does not depend on a pull in between
    sync.push(s3, mine, bucket, prefix, delete=delete)
    assert body(s3, bucket, prefix, "x.txt") == b"their newer version"
    # and the next pull brings their version here (the local copy was unchanged)
    sync.pull(s3, bucket, prefix, mine, delete=True)
    assert (mine / "x.txt").read_text() == "their newer version"


@pytest.mark.parametrize("delete", [False, True])
def test_unchanged_local_copy_does_not_undo_a_remote_deletion(s3, bucket, prefix, shared, delete):
    mine, theirs = shared
    (theirs / "z.txt").unlink()
    sync.push(s3, theirs, bucket, prefix, delete=True)
    assert "z.txt" not in keys(s3, bucket, prefix)

    stats = sync.push(s3, mine, bucket, prefix, delete=delete)
    assert stats.files_done == 0
    assert "z.txt" not in keys(s3, bucket, prefix)  # their deletion wins
    sync.push(s3, mine, bucket, prefix, delete=delete)
    assert "z.txt" not in keys(s3, bucket, prefix)
    sync.pull(s3, bucket, prefix, mine, delete=True)
    assert not (mine / "z.txt").exists()


# --------------------------------------------------------------------------
# both changed: ours at the key, theirs preserved
# --------------------------------------------------------------------------


def test_both_changed_uploads_local_and_preserves_remote(s3, bucket, prefix, shared):
    mine, theirs = shared
    write(theirs / "x.txt", "theirs", mtime_ns=LATER)
    write(theirs / "sub" / "y.txt", "their y", mtime_ns=LATER)
    (theirs / "link").unlink()
    symlink(theirs / "link", "their-target")
    sync.push(s3, theirs, bucket, prefix)

    write(mine / "x.txt", "mine, also changed", mtime_ns=LATER + 1)
    write(mine / "sub" / "y.txt", "my y", mtime_ns=LATER + 1)
    (mine / "link").unlink()
    symlink(mine / "link", "my-target")
    stats = sync.push(s3, mine, bucket, prefix, delete=True)
    assert stats.files_done == 3 and stats.files_deleted == 0

    assert body(s3, bucket, prefix, "x.txt") == b"mine, also changed"
    assert body(s3, bucket, prefix, "sub/y.txt") == b"my y"
    link = s3.head_object(Bucket=bucket, Key=f"{prefix}/link")["Metadata"]
    assert link["symlink"] == "my-target"
    # nothing lost: their versions are kept under <prefix>/.ainb-preserved/<time>/
    assert preserved(s3, bucket, prefix) == {
        "x.txt": b"theirs",
        "sub/y.txt": b"their y",
        "link": b"",
    }
    [copy] = [k for k in keys(s3, bucket, prefix) if k.startswith(PRESERVED) and "link" in k]
    meta = s3.head_object(Bucket=bucket, Key=f"{prefix}/{copy}")["Metadata"]
    assert meta["symlink"] == "their-target"  # a copy with its metadata: still a link

    # a pull brings the preserved copies into the tree, where the user can see them
    stats = sync.pull(s3, bucket, prefix, theirs, delete=True)
    assert stats.files_failed == 0
    assert (theirs / "x.txt").read_text() == "mine, also changed"
    found = {p.name for p in (theirs / ".ainb-preserved").rglob("*") if not p.is_dir()}
    assert found == {"x.txt", "y.txt", "link"}


def test_object_new_since_the_last_sync_is_preserved_before_it_is_replaced(
    s3, bucket, prefix, shared, tmp_path
):
    """Both created a file of the same name since the last sync: theirs is kept aside."""
    mine, theirs = shared
    write(theirs / "notes.txt", "their notes")
    write(theirs / "other.txt", "not mine either")
    sync.push(s3, theirs, bucket, prefix)
    write(mine / "notes.txt", "my notes")
    stats = sync.push(s3, mine, bucket, prefix, delete=True)
    assert stats.files_done == 1 and stats.files_deleted == 0
    assert body(s3, bucket, prefix, "notes.txt") == b"my notes"
    assert body(s3, bucket, prefix, "other.txt") == b"not mine either"
    assert preserved(s3, bucket, prefix) == {"notes.txt": b"their notes"}

    # pushing again: the object now holds this file, nothing more to preserve
    again = sync.push(s3, mine, bucket, prefix, delete=True)
    assert again.files_done == 0 and len(preserved(s3, bucket, prefix)) == 1

    # a directory with no record of the prefix at all has no "since": a first push
    # uploads its files as it always did (and, with delete=True, deletes nothing)
    fresh = tmp_path / "fresh"
    write(fresh / "other.txt", "a first push")
    stats = sync.push(s3, fresh, bucket, prefix, delete=True)
    assert stats.files_done == 1 and stats.files_deleted == 0
    assert body(s3, bucket, prefix, "other.txt") == b"a first push"
    assert len(preserved(s3, bucket, prefix)) == 1


def test_a_write_between_listing_and_upload_is_not_overwritten(s3, bucket, prefix, shared):
    """The upload is conditional on the object the push listed (If-Match /
    If-None-Match, which SeaweedFS honours): a write that lands after the listing
    makes that file fail instead of being overwritten; the next push handles it."""
    mine, theirs = shared
    write(mine / "x.txt", "mine", mtime_ns=LATER)
    write(mine / "new.txt", "my new file")
    write(theirs / "x.txt", "theirs, written mid-push", mtime_ns=LATER + 1)
    write(theirs / "new.txt", "their new file")
    raced = []

    def other_writer_strikes(_stats) -> None:
        # the first progress report comes right after the listing
        if not raced:
            raced.append(sync.push(s3, theirs, bucket, prefix))

    with pytest.raises(StorageError, match="changed in storage"):
        sync.push(s3, mine, bucket, prefix, progress=other_writer_strikes)
    assert raced and raced[0].files_done == 2
    assert body(s3, bucket, prefix, "x.txt") == b"theirs, written mid-push"
    assert body(s3, bucket, prefix, "new.txt") == b"their new file"

    stats = sync.push(s3, mine, bucket, prefix)  # retried: now a plain conflict
    assert stats.files_done == 2
    assert body(s3, bucket, prefix, "x.txt") == b"mine"
    assert preserved(s3, bucket, prefix) == {
        "x.txt": b"theirs, written mid-push",
        "new.txt": b"their new file",
    }


# --------------------------------------------------------------------------
# delete=True keeps what it did not see
# --------------------------------------------------------------------------


def test_mirror_push_keeps_remote_objects_new_or_changed_since_the_last_sync(
    s3, bucket, prefix, shared
):
    mine, theirs = shared
    time.sleep(1.1)  # SeaweedFS's LastModified has a resolution of one second
    write(theirs / "new-from-them.txt", "brand new")
    write(theirs / "z.txt", "their z", mtime_ns=LATER)
    (theirs / "link").unlink()
    symlink(theirs / "link", "sub/y.txt")  # same zero bytes, same ETag: a newer write
    sync.push(s3, theirs, bucket, prefix)

    for rel in ("z.txt", "link", "sub/y.txt"):  # mine deletes them, theirs only y.txt
        os.unlink(mine / rel)
    stats = sync.push(s3, mine, bucket, prefix, delete=True)
    assert stats.files_deleted == 1
    remote = keys(s3, bucket, prefix)
    assert "sub/y.txt" not in remote  # unchanged since the last sync: a deletion made here
    assert {"new-from-them.txt", "z.txt", "link", "x.txt"} <= remote
    assert body(s3, bucket, prefix, "z.txt") == b"their z"
    assert s3.head_object(Bucket=bucket, Key=f"{prefix}/link")["Metadata"]["symlink"] == (
        "sub/y.txt"
    )


# --------------------------------------------------------------------------
# the ordinary cases are unchanged
# --------------------------------------------------------------------------


def test_ordinary_pushes_still_upload_and_delete(s3, bucket, prefix, shared):
    mine, theirs = shared
    (theirs / "z.txt").unlink()
    sync.push(s3, theirs, bucket, prefix, delete=True)  # theirs deletes z.txt

    write(mine / "x.txt", "my change", mtime_ns=LATER)  # only mine changed it
    write(mine / "z.txt", "my z", mtime_ns=LATER)  # changed here, deleted there
    write(mine / "added.txt", "added here")
    (mine / "sub" / "y.txt").unlink()  # deleted here, unchanged there
    stats = sync.push(s3, mine, bucket, prefix, delete=True)
    assert stats.files_done == 4  # x.txt, z.txt, added.txt, the now empty "sub/"
    assert stats.files_deleted == 1 and stats.files_failed == 0
    assert body(s3, bucket, prefix, "x.txt") == b"my change"
    assert body(s3, bucket, prefix, "z.txt") == b"my z"  # local work wins over a deletion
    assert body(s3, bucket, prefix, "added.txt") == b"added here"
    assert keys(s3, bucket, prefix) == {"x.txt", "z.txt", "added.txt", "link", "sub/"}
    assert preserved(s3, bucket, prefix) == {}

    again = sync.push(s3, mine, bucket, prefix, delete=True)
    assert again.files_done == 0 and again.files_deleted == 0


def test_both_changed_large_file_is_preserved_too(s3, bucket, prefix, shared):
    """Multipart objects: their ETag, the conditional upload and the copy all work."""
    mine, theirs = shared
    ours, other = os.urandom(36 * MiB), os.urandom(34 * MiB)
    write(theirs / "model.bin", other, mtime_ns=LATER)
    sync.push(s3, theirs, bucket, prefix)
    sync.pull(s3, bucket, prefix, mine, delete=True)
    write(theirs / "model.bin", other[::-1], mtime_ns=LATER + 1)  # same size, new bytes
    sync.push(s3, theirs, bucket, prefix)

    write(mine / "model.bin", ours, mtime_ns=LATER + 2)
    stats = sync.push(s3, mine, bucket, prefix)
    assert stats.files_done == 1
    assert body(s3, bucket, prefix, "model.bin") == ours
    assert preserved(s3, bucket, prefix) == {"model.bin": other[::-1]}


class _NoConditions:
    """Puts through the real engine, except that conditional ones fail as a server
    without conditional writes answers them (501 NotImplemented)."""

    def __init__(self, monkeypatch) -> None:
        self.refused = 0
        real = CrtEngine.put

        def put(engine, bucket, key, headers, on_done, **kw):
            if any(k.lower() in ("if-match", "if-none-match") for k, _ in headers):
                self.refused += 1
                t = Transfer(kw.get("context"), None, on_done)
                t.error = ClientError(
                    {
                        "Error": {"Code": "NotImplemented", "Message": "not implemented"},
                        "ResponseMetadata": {"HTTPStatusCode": 501},
                    },
                    "PutObject",
                )
                t.finished = True
                on_done(t)
                return t
            return real(engine, bucket, key, headers, on_done, **kw)

        monkeypatch.setattr(CrtEngine, "put", put)


def test_a_server_without_conditional_uploads_still_gets_the_push(
    s3, bucket, prefix, shared, monkeypatch, caplog
):
    mine, theirs = shared
    write(theirs / "x.txt", "theirs", mtime_ns=LATER)
    sync.push(s3, theirs, bucket, prefix)
    server = _NoConditions(monkeypatch)
    write(mine / "x.txt", "mine", mtime_ns=LATER + 1)  # a conflict
    write(mine / "z.txt", "my z", mtime_ns=LATER + 1)  # a plain change
    write(mine / "new.txt", "new")  # a new file
    with caplog.at_level(logging.WARNING, logger="activities.storage.sync"):
        stats = sync.push(s3, mine, bucket, prefix, delete=True)
    assert stats.files_done == 3 and stats.files_failed == 0
    assert server.refused >= 1  # asked once, then not again for this push
    assert "does not support conditional uploads" in caplog.text
    assert body(s3, bucket, prefix, "x.txt") == b"mine"
    assert body(s3, bucket, prefix, "z.txt") == b"my z"
    assert body(s3, bucket, prefix, "new.txt") == b"new"
    assert preserved(s3, bucket, prefix) == {"x.txt": b"theirs"}
