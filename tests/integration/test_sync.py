"""Integration tests for activities.storage.sync against a real S3 server (SeaweedFS)."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from activities.storage import sync
from activities.storage.errors import (
    StorageAccessError,
    StorageError,
    StorageUnavailableError,
    SyncCancelled,
)
from activities.storage.sync import SyncStats

try:
    from tests.integration.s3_server import SeaweedServer, unused_port
except ImportError:  # pragma: no cover - rootdir not on sys.path
    from s3_server import SeaweedServer, unused_port  # type: ignore[no-redef]

MiB = 1024 * 1024
WORKERS = 16
MTIME = 1_600_000_000_123_456_789  # with sub-second nanoseconds on purpose


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    server = SeaweedServer(tmp_path_factory.mktemp("seaweed"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3(seaweed: SeaweedServer):
    return seaweed.client(workers=WORKERS)


@pytest.fixture(scope="session")
def bucket(s3) -> str:
    name = "ainb-sync-test"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    return f"tests/{request.node.name}-{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def write(path: Path, data: bytes | str, *, mode: int = 0o644, mtime_ns: int = MTIME) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    os.chmod(path, mode)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def symlink(path: Path, target: str, *, mtime_ns: int = MTIME) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)
    os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
    return path


def snapshot(root: Path) -> dict[str, tuple]:
    """Everything that must round-trip, keyed by relative path (lstat based)."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p), st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir",)
            else:
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
                out[rel] = ("file", digest, stat.S_IMODE(st.st_mode), st.st_mtime_ns)
    return out


def keys(s3, bucket: str, prefix: str) -> set[str]:
    out: set[str] = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        out.update(o["Key"][len(prefix) + 1 :] for o in page.get("Contents", ()))
    return out


def leftovers(root: Path) -> list[str]:
    return [
        str(p)
        for p in root.rglob("*")
        if p.name.startswith(".ainb-tmp-") or p.name.endswith(".tmp")
    ]


def make_tree(root: Path) -> None:
    write(root / "README.md", "# hello\n")
    write(root / "src" / "pkg" / "mod.py", "print('hi')\n" * 100)
    write(root / "src" / "pkg" / "deep" / "er" / "data.json", '{"a": 1}')
    write(root / "bin" / "run.sh", "#!/bin/sh\necho run\n", mode=0o755)
    write(root / "secret.txt", "private", mode=0o600)
    write(root / "empty-file", b"")
    (root / "empty-dir").mkdir()
    (root / "nested-empty" / "inner").mkdir(parents=True)
    symlink(root / "link-to-file", "src/pkg/mod.py")
    symlink(root / "link-to-dir", "src")
    symlink(root / "dangling", "does/not/exist")
    symlink(root / "outside", "/etc")  # must be stored as a link, never followed
    write(root / "ünïcødé" / "ファイル 名.txt", "unicode ✓")
    write(root / "odd names" / "a+b%c#d?e&f=g;h'i\"j.txt", "odd")
    write(root / "big" / "model.bin", os.urandom(40 * MiB), mtime_ns=MTIME + 7)


def check_stats(stats: SyncStats, *, total: int, done: int, skipped: int) -> None:
    assert (stats.files_total, stats.files_done, stats.files_skipped) == (total, done, skipped)
    assert stats.files_failed == 0


# --------------------------------------------------------------------------
# round trip and incremental behaviour
# --------------------------------------------------------------------------


def test_round_trip_preserves_everything(s3, bucket, prefix, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src)

    stats = sync.push(s3, src, bucket, prefix, workers=WORKERS)
    # 9 files + 4 symlinks + 2 empty-dir markers ("empty-dir/", "nested-empty/inner/")
    check_stats(stats, total=15, done=15, skipped=0)
    assert stats.bytes_done == stats.bytes_total > 40 * MiB

    remote = keys(s3, bucket, prefix)
    assert "empty-dir/" in remote and "nested-empty/inner/" in remote
    assert "nested-empty/" not in remote  # not empty: implied by its child
    assert not any(k.startswith("outside/") for k in remote), "symlink was followed"
    head = s3.head_object(Bucket=bucket, Key=f"{prefix}/big/model.bin")
    assert "-" in head["ETag"], "40 MiB file should have been uploaded in parts"
    assert head["Metadata"]["mtime"] == "1600000000.123456796"
    assert s3.head_object(Bucket=bucket, Key=f"{prefix}/bin/run.sh")["Metadata"]["mode"] == "0755"
    link = s3.head_object(Bucket=bucket, Key=f"{prefix}/link-to-file")
    assert link["ContentLength"] == 0 and link["Metadata"]["symlink"] == "src/pkg/mod.py"

    stats = sync.pull(s3, bucket, prefix, dst, workers=WORKERS)
    check_stats(stats, total=15, done=15, skipped=0)

    assert snapshot(dst) == snapshot(src)
    assert os.access(dst / "bin" / "run.sh", os.X_OK)
    assert (dst / "empty-dir").is_dir() and not any((dst / "empty-dir").iterdir())
    assert (dst / "outside").is_symlink()
    assert not leftovers(dst) and not leftovers(src)
    # manifests live next to, never inside, the synced directories
    assert (tmp_path / ".dst.manifest.json").is_file()
    assert (tmp_path / ".src.push-manifest.json").is_file()
    assert not list(dst.glob(".*manifest*"))


def test_second_sync_transfers_nothing(s3, bucket, prefix, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src)
    first = sync.push(s3, src, bucket, prefix)
    sync.pull(s3, bucket, prefix, dst)

    again = sync.push(s3, src, bucket, prefix)
    check_stats(again, total=first.files_total, done=0, skipped=first.files_total)
    assert again.bytes_done == 0

    again = sync.pull(s3, bucket, prefix, dst)
    check_stats(again, total=first.files_total, done=0, skipped=first.files_total)

    # a pull also teaches the push side: pushing the pulled copy uploads nothing
    back = sync.push(s3, dst, bucket, prefix, delete=True)
    check_stats(back, total=first.files_total, done=0, skipped=first.files_total)
    assert back.files_deleted == 0


def test_push_without_manifest_skips_files_with_same_size_and_mtime(s3, bucket, prefix, tmp_path):
    src = tmp_path / "src"
    make_tree(src)
    first = sync.push(s3, src, bucket, prefix)
    (tmp_path / ".src.push-manifest.json").unlink()

    again = sync.push(s3, src, bucket, prefix)
    # files and symlinks are recognised from their metadata; SeaweedFS drops the
    # metadata of directory markers, so those two are re-created (zero bytes)
    assert again.files_done <= 2
    assert again.files_skipped == first.files_total - again.files_done
    assert again.bytes_done == 0


def test_one_changed_file_transfers_exactly_one(s3, bucket, prefix, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src)
    total = sync.push(s3, src, bucket, prefix).files_total
    sync.pull(s3, bucket, prefix, dst)

    write(src / "src" / "pkg" / "mod.py", "print('changed')\n", mtime_ns=MTIME + 10**9)
    stats = sync.push(s3, src, bucket, prefix)
    check_stats(stats, total=total, done=1, skipped=total - 1)
    assert stats.bytes_done == len("print('changed')\n")

    stats = sync.pull(s3, bucket, prefix, dst)
    check_stats(stats, total=total, done=1, skipped=total - 1)
    assert (dst / "src" / "pkg" / "mod.py").read_text() == "print('changed')\n"
    assert snapshot(dst) == snapshot(src)

    # a mode change alone (same bytes, same mtime) is also noticed; the object's
    # ETag stays the same, so the pull notices it from LastModified (1 s resolution)
    time.sleep(1.1)
    os.chmod(src / "README.md", 0o640)
    os.utime(src / "README.md", ns=(MTIME, MTIME))
    stats = sync.push(s3, src, bucket, prefix)
    assert stats.files_done == 1
    sync.pull(s3, bucket, prefix, dst)
    assert stat.S_IMODE((dst / "README.md").stat().st_mode) == 0o640


# --------------------------------------------------------------------------
# deletion semantics
# --------------------------------------------------------------------------


def test_push_delete_false_keeps_remote_objects(s3, bucket, prefix, tmp_path):
    src = tmp_path / "src"
    write(src / "keep.txt", "keep")
    write(src / "gone.txt", "gone")
    write(src / "dir" / "gone-too.txt", "gone")
    sync.push(s3, src, bucket, prefix)

    (src / "gone.txt").unlink()
    (src / "dir" / "gone-too.txt").unlink()
    stats = sync.push(s3, src, bucket, prefix, delete=False)
    assert stats.files_deleted == 0
    assert {"keep.txt", "gone.txt", "dir/gone-too.txt"} <= keys(s3, bucket, prefix)


def test_push_delete_true_removes_remote_objects(s3, bucket, prefix, tmp_path):
    src = tmp_path / "src"
    write(src / "keep.txt", "keep")
    write(src / "gone.txt", "gone")
    write(src / "dir" / "gone-too.txt", "gone")
    symlink(src / "gone-link", "keep.txt")
    sync.push(s3, src, bucket, prefix)

    (src / "gone.txt").unlink()
    (src / "gone-link").unlink()
    (src / "dir" / "gone-too.txt").unlink()  # "dir" is now empty: becomes a marker
    stats = sync.push(s3, src, bucket, prefix, delete=True)
    assert stats.files_deleted == 3
    assert keys(s3, bucket, prefix) == {"keep.txt", "dir/"}

    # and the pull side mirrors that with delete=True
    dst = tmp_path / "dst"
    write(dst / "gone.txt", "stale local copy")
    stats = sync.pull(s3, bucket, prefix, dst, delete=True)
    assert snapshot(dst) == snapshot(src)


def test_exclude_is_neither_uploaded_nor_deleted(s3, bucket, prefix, tmp_path):
    src = tmp_path / "src"
    write(src / "notebook.ipynb", "{}")
    write(src / "data" / "vol1" / "big.dat", "volume data")
    write(src / "data" / "vol1" / "sub" / "x", "volume data")
    write(src / "data" / "vol10" / "y", "not excluded: only data/vol1 is")
    write(src / "data" / ".vol1.manifest.json", "{}")  # the volume's own sync state
    write(src / "data" / ".vol1.sync.lock", "")
    # objects written under the excluded path by someone else (e.g. the volume's own sync)
    s3.put_object(Bucket=bucket, Key=f"{prefix}/data/vol1/remote-only.dat", Body=b"remote")
    s3.put_object(Bucket=bucket, Key=f"{prefix}/stale.txt", Body=b"stale")

    stats = sync.push(s3, src, bucket, prefix, exclude=["data/vol1"])
    assert stats.files_done == 2 and stats.files_deleted == 0
    (src / "notebook.ipynb").unlink()
    stats = sync.push(s3, src, bucket, prefix, delete=True, exclude=["data/vol1"])
    assert stats.files_failed == 0 and stats.files_done == 0
    # only what this directory pushed and then deleted: stale.txt was never seen here
    assert stats.files_deleted == 1
    assert keys(s3, bucket, prefix) == {
        "stale.txt",
        "data/vol10/y",
        "data/vol1/remote-only.dat",
    }
    # trailing slashes / "./" in excludes are tolerated
    again = sync.push(s3, src, bucket, prefix, delete=True, exclude=["./data/vol1/"])
    assert again.files_done == 0 and again.files_deleted == 0


def test_pull_delete_semantics(s3, bucket, prefix, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    write(src / "a.txt", "a")
    write(src / "sub" / "b.txt", "b")
    sync.push(s3, src, bucket, prefix)

    write(dst / "local-only.txt", "mine")
    write(dst / "local-dir" / "c.txt", "mine too")
    write(dst / "a.txt", "old local version", mtime_ns=MTIME - 10**9)

    stats = sync.pull(s3, bucket, prefix, dst, delete=False)
    assert stats.files_deleted == 0
    assert (dst / "local-only.txt").read_text() == "mine"
    assert (dst / "local-dir" / "c.txt").read_text() == "mine too"
    assert (dst / "a.txt").read_text() == "a"  # remote wins for files it has
    assert (dst / "sub" / "b.txt").read_text() == "b"

    stats = sync.pull(s3, bucket, prefix, dst, delete=True)
    assert stats.files_deleted == 3  # local-only.txt, local-dir/c.txt, local-dir
    assert snapshot(dst) == snapshot(src)
    # files that were never synced are moved aside, not destroyed
    assert preserved(tmp_path, "dst") == {
        "a.txt": b"old local version",  # overwritten by the first pull
        "local-only.txt": b"mine",
        "local-dir/c.txt": b"mine too",
    }


def preserved(parent: Path, name: str) -> dict[str, bytes]:
    """Contents of the ``.{name}.preserved/<run>/...`` areas, merged."""
    out: dict[str, bytes] = {}
    for run in (parent / f".{name}.preserved").glob("*"):
        for p in run.rglob("*"):
            if p.is_file():
                out[p.relative_to(run).as_posix()] = p.read_bytes()
    return out


def test_pull_keeps_local_changes_that_were_never_pushed(s3, bucket, prefix, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    write(src / "notes.txt", "v1")
    write(src / "other.txt", "other")
    sync.push(s3, src, bucket, prefix)
    sync.pull(s3, bucket, prefix, dst, delete=True)

    # the session edits a file and creates one, then the host dies before the push
    write(dst / "notes.txt", "v2, never pushed", mtime_ns=MTIME + 5 * 10**9)
    write(dst / "new.txt", "brand new, never pushed")

    stats = sync.pull(s3, bucket, prefix, dst, delete=True)
    assert stats.files_done == 0 and stats.files_skipped == 2
    assert (dst / "notes.txt").read_text() == "v2, never pushed"  # local work wins
    assert not (dst / "new.txt").exists()  # delete=True: not in storage, so it leaves...
    assert preserved(tmp_path, "dst") == {"new.txt": b"brand new, never pushed"}  # ...safely

    stats = sync.push(s3, dst, bucket, prefix, delete=True)
    assert stats.files_done == 1
    obj = s3.get_object(Bucket=bucket, Key=f"{prefix}/notes.txt")
    assert obj["Body"].read() == b"v2, never pushed"


def test_pull_preserves_local_copy_when_both_sides_changed(s3, bucket, prefix, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    write(src / "notes.txt", "v1")
    sync.push(s3, src, bucket, prefix)
    sync.pull(s3, bucket, prefix, dst)

    write(dst / "notes.txt", "local v2", mtime_ns=MTIME + 10**9)
    write(src / "notes.txt", "remote v2", mtime_ns=MTIME + 2 * 10**9)
    sync.push(s3, src, bucket, prefix)

    stats = sync.pull(s3, bucket, prefix, dst)
    assert stats.files_done == 1
    assert (dst / "notes.txt").read_text() == "remote v2"
    assert preserved(tmp_path, "dst") == {"notes.txt": b"local v2"}


class MarkerMetadataClient:
    """Delegates to a real client but reports metadata on directory markers.

    SeaweedFS drops user metadata of ``dir/`` marker objects; AWS S3 keeps it.
    This lets the test exercise the code path that applies it.
    """

    def __init__(self, real, metadata: dict[str, str]) -> None:
        self._real, self._metadata = real, metadata

    def __getattr__(self, name):
        return getattr(self._real, name)

    def head_object(self, **kwargs):
        resp = self._real.head_object(**kwargs)
        if kwargs["Key"].endswith("/"):
            resp["Metadata"] = dict(self._metadata)
        return resp


def test_directory_marker_metadata_is_applied(s3, bucket, prefix, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "private-empty").mkdir(parents=True)
    write(src / "f.txt", "f")
    sync.push(s3, src, bucket, prefix)
    client = MarkerMetadataClient(s3, {"mode": "4700", "mtime": "1600000000.5"})
    stats = sync.pull(client, bucket, prefix, dst)
    assert stats.files_done == 2
    st = (dst / "private-empty").stat()
    assert stat.S_IMODE(st.st_mode) == 0o700  # setuid never applied
    assert st.st_mtime_ns == 1_600_000_000_500_000_000


def test_push_delete_needs_a_sync_record(s3, bucket, prefix, tmp_path):
    src = tmp_path / "src"
    write(src / "a.txt", "a")
    write(src / "b.txt", "b")
    sync.push(s3, src, bucket, prefix)

    # a directory that never had anything to do with this prefix (say, a mount that
    # failed and left an empty directory behind) must not wipe the remote copy
    wrong = tmp_path / "wrong"
    write(wrong / "c.txt", "c")
    for _ in range(2):  # retrying does not change the answer
        stats = sync.push(s3, wrong, bucket, prefix, delete=True)
        assert stats.files_deleted == 0  # it never saw a.txt and b.txt: not its deletions
    assert keys(s3, bucket, prefix) == {"a.txt", "b.txt", "c.txt"}


# --------------------------------------------------------------------------
# safety
# --------------------------------------------------------------------------


def test_pull_never_writes_through_symlinks(s3, bucket, prefix, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    s3.put_object(Bucket=bucket, Key=f"{prefix}/sub/file.txt", Body=b"payload")
    dst = tmp_path / "dst"
    symlink(dst / "sub", str(outside))  # a local symlink where the remote has a directory

    with pytest.raises(StorageError) as info:
        sync.pull(s3, bucket, prefix, dst, delete=False)
    assert "sub" in str(info.value) and "1 of 1" in str(info.value)
    assert not list(outside.iterdir())

    stats = sync.pull(s3, bucket, prefix, dst, delete=True)  # now the link may be replaced
    assert stats.files_failed == 0
    assert not (dst / "sub").is_symlink()
    assert (dst / "sub" / "file.txt").read_bytes() == b"payload"
    assert not list(outside.iterdir())


def test_failed_file_raises_after_the_rest_and_skips_deletes(s3, bucket, prefix, tmp_path):
    src = tmp_path / "src"
    write(src / "good.txt", "good")
    s3.put_object(Bucket=bucket, Key=f"{prefix}/stale.txt", Body=b"stale")
    # a file name that is not valid UTF-8 cannot become an S3 key
    bad = os.path.join(os.fsencode(src), b"bad-\xff.txt")
    with open(bad, "wb") as f:
        f.write(b"x")

    with pytest.raises(StorageError) as info:
        sync.push(s3, src, bucket, prefix, delete=True)
    err = info.value
    assert type(err) is StorageError
    assert bucket in str(err) and prefix in str(err) and "1 of 2" in str(err)
    assert err.stats.files_failed == 1 and err.stats.files_done == 1
    # the rest was uploaded, but nothing was deleted because the push was incomplete
    assert keys(s3, bucket, prefix) == {"good.txt", "stale.txt"}


def test_push_delete_refused_after_incomplete_pull(s3, bucket, prefix, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    for i in range(600):
        write(src / f"f{i:04d}.txt", f"file {i}\n" * 20)
    total = sync.push(s3, src, bucket, prefix).files_total

    def stop_after_some() -> bool:
        return dst.is_dir() and len(os.listdir(dst)) >= 20

    with pytest.raises(SyncCancelled) as info:
        sync.pull(s3, bucket, prefix, dst, should_stop=stop_after_some, workers=4)
    assert bucket in str(info.value)
    partial = info.value.stats
    assert 0 < partial.files_done < total
    assert not leftovers(dst)
    assert len(os.listdir(dst)) == partial.files_done  # every file is complete or absent

    # pushing the half-pulled tree with delete=True would destroy data: refused
    with pytest.raises(StorageError, match="did not finish"):
        sync.push(s3, dst, bucket, prefix, delete=True)
    assert len(keys(s3, bucket, prefix)) == total

    # the next pull resumes: it transfers only what is missing
    stats = sync.pull(s3, bucket, prefix, dst)
    assert stats.files_total == total
    assert stats.files_skipped >= partial.files_done
    assert stats.files_done == total - stats.files_skipped < total
    assert snapshot(dst) == snapshot(src)
    sync.push(s3, dst, bucket, prefix, delete=True)  # allowed again


def test_push_cancel_and_resume(s3, bucket, prefix, tmp_path):
    src = tmp_path / "src"
    for i in range(600):
        write(src / "d" / f"f{i:04d}.txt", f"file {i}\n" * 20)
    calls = 0

    def stop_soon() -> bool:
        nonlocal calls
        calls += 1
        return calls >= 3

    with pytest.raises(SyncCancelled) as info:
        sync.push(s3, src, bucket, prefix, should_stop=stop_soon, workers=4)
    partial = info.value.stats
    assert partial.files_done < 600
    uploaded = len(keys(s3, bucket, prefix))
    assert uploaded >= partial.files_done

    stats = sync.push(s3, src, bucket, prefix)
    assert stats.files_total == 600
    assert stats.files_skipped >= partial.files_done
    assert stats.files_done == 600 - stats.files_skipped
    assert len(keys(s3, bucket, prefix)) == 600


def test_progress_is_called_from_the_calling_thread(s3, bucket, prefix, tmp_path):
    src = tmp_path / "src"
    for i in range(50):
        write(src / f"f{i}.txt", "x" * 1000)
    seen: list[SyncStats] = []
    threads: set[int] = set()

    def progress(stats: SyncStats) -> None:
        seen.append(stats)
        threads.add(threading.get_ident())

    final = sync.push(s3, src, bucket, prefix, progress=progress)
    assert seen and seen[-1] == final
    assert threads == {threading.get_ident()}
    assert final.files_done == 50 and final.bytes_done == 50_000


def test_delete_prefix(s3, bucket, prefix, tmp_path):
    src = tmp_path / "src"
    write(src / "a.txt", "a")
    write(src / "d" / "b.txt", "b")
    (src / "empty").mkdir()
    sync.push(s3, src, bucket, prefix)
    s3.put_object(Bucket=bucket, Key=f"{prefix}x/sibling.txt", Body=b"not mine")

    assert sync.delete_prefix(s3, bucket, prefix) == 3
    assert keys(s3, bucket, prefix) == set()
    assert keys(s3, bucket, prefix + "x") == {"sibling.txt"}
    assert sync.delete_prefix(s3, bucket, prefix + "/") == 0
    with pytest.raises(ValueError):
        sync.delete_prefix(s3, bucket, "/")


def test_empty_prefix_and_prefix_normalisation(s3, seaweed, tmp_path):
    name = f"ainb-root-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=name)
    src, dst = tmp_path / "src", tmp_path / "dst"
    write(src / "top.txt", "top")
    write(src / "d" / "x.txt", "x")
    sync.push(s3, src, name, "")
    assert {o["Key"] for o in s3.list_objects_v2(Bucket=name)["Contents"]} == {"top.txt", "d/x.txt"}
    sync.pull(s3, name, "/", dst)
    assert snapshot(dst) == snapshot(src)

    sync.push(s3, src, name, "/a/b/")
    assert sync.pull(s3, name, "a/b", tmp_path / "dst2").files_done == 2
    sync.check_readable(s3, name, "")


# --------------------------------------------------------------------------
# error mapping
# --------------------------------------------------------------------------


def test_missing_bucket_is_an_access_error(s3, tmp_path):
    missing = f"no-such-bucket-{uuid.uuid4().hex[:8]}"
    write(tmp_path / "src" / "a.txt", "a")
    calls = [
        lambda: sync.check_readable(s3, missing, "p"),
        lambda: sync.pull(s3, missing, "p", tmp_path / "dst"),
        lambda: sync.push(s3, tmp_path / "src", missing, "p"),
        lambda: sync.delete_prefix(s3, missing, "p"),
    ]
    for call in calls:
        with pytest.raises(StorageAccessError) as info:
            call()
        assert missing in str(info.value) and "does not exist" in str(info.value)
        assert info.value.bucket == missing


@pytest.mark.parametrize("which", ["secret", "access-key"])
def test_bad_credentials_are_an_access_error(seaweed, bucket, prefix, tmp_path, which):
    if which == "secret":
        client = seaweed.client(secret_key="wrong-secret")
    else:
        client = seaweed.client(access_key="unknown-key")
    with pytest.raises(StorageAccessError) as info:
        sync.check_readable(client, bucket, prefix)
    assert bucket in str(info.value) and "credentials" in str(info.value)
    write(tmp_path / "src" / "a.txt", "a")
    with pytest.raises(StorageAccessError):
        sync.push(client, tmp_path / "src", bucket, prefix)
    with pytest.raises(StorageAccessError):
        sync.pull(client, bucket, prefix, tmp_path / "dst")


def test_unreachable_endpoint_is_unavailable(seaweed, tmp_path):
    import boto3
    from botocore.config import Config

    endpoint = f"http://127.0.0.1:{unused_port()}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=seaweed.access_key,
        aws_secret_access_key=seaweed.secret_key,
        region_name="us-east-1",
        config=Config(
            connect_timeout=1,
            read_timeout=2,
            retries={"max_attempts": 1, "mode": "standard"},
            s3={"addressing_style": "path"},
        ),
    )
    write(tmp_path / "src" / "a.txt", "a")
    calls = [
        lambda: sync.check_readable(client, "some-bucket", "p"),
        lambda: sync.pull(client, "some-bucket", "p", tmp_path / "dst"),
        lambda: sync.push(client, tmp_path / "src", "some-bucket", "p"),
    ]
    for call in calls:
        with pytest.raises(StorageUnavailableError) as info:
            call()
        assert endpoint in str(info.value) and "some-bucket" in str(info.value)


def test_server_restart_keeps_data_and_maps_outage(tmp_path):
    """The reusable helper can stop S3 and bring it back on the same data and ports."""
    with SeaweedServer(tmp_path / "weed") as server:
        client = server.client(connect_timeout=1, retries={"max_attempts": 1, "mode": "standard"})
        client.create_bucket(Bucket="restart")
        write(tmp_path / "src" / "a.txt", "survives restarts")
        sync.push(client, tmp_path / "src", "restart", "p")
        endpoint = server.endpoint

        server.stop()
        with pytest.raises(StorageUnavailableError):
            sync.pull(client, "restart", "p", tmp_path / "dst")

        server.start()
        assert server.endpoint == endpoint
        sync.pull(client, "restart", "p", tmp_path / "dst")
        assert (tmp_path / "dst" / "a.txt").read_text() == "survives restarts"
