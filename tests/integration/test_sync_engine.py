"""Integration tests for the CRT transfer engine behind activities.storage.sync:
seeding from a local copy, multipart round trips, cancellation/resume of large
transfers, a kill -9 mid-pull, and error mapping of CRT failures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from activities.storage import sync
from activities.storage.crt_engine import CrtEngine
from activities.storage.errors import (
    StorageAccessError,
    StorageUnavailableError,
    SyncCancelled,
)
from activities.storage.sync.common import _Ctx
from activities.storage.sync.error_map import _map_error
from activities.storage.sync.manifest import _Manifest

try:
    from tests.integration.s3_server import SeaweedServer, unused_port
    from tests.integration.test_sync import (
        bucket,
        keys,
        leftovers,
        make_tree,
        prefix,
        s3,
        seaweed,
        snapshot,
        write,
    )
except ImportError:  # pragma: no cover - rootdir not on sys.path
    from s3_server import SeaweedServer, unused_port  # type: ignore[no-redef]
    from test_sync import (  # type: ignore[no-redef]  # noqa: F401
        bucket,
        keys,
        leftovers,
        make_tree,
        prefix,
        s3,
        seaweed,
        snapshot,
        write,
    )

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parents[2]


def regular_files(root: Path) -> int:
    return sum(1 for p in root.rglob("*") if p.is_file() and not p.is_symlink())


# --------------------------------------------------------------------------
# seed_from
# --------------------------------------------------------------------------


def test_pull_seeds_from_a_previous_pull(s3, bucket, prefix, tmp_path):
    src, cache, dst = tmp_path / "src", tmp_path / "cache", tmp_path / "dst"
    make_tree(src)
    sync.push(s3, src, bucket, prefix)
    sync.pull(s3, bucket, prefix, cache)
    nfiles = regular_files(cache)

    # one cached file changed locally: it must not be used as a seed (downloaded instead)
    (cache / "README.md").write_text("changed in the cache, not in storage\n")

    stats = sync.pull(s3, bucket, prefix, dst, seed_from=cache)
    assert stats.files_seeded == nfiles - 1
    assert stats.files_done == stats.files_total  # seeded files count as processed
    assert stats.bytes_done == stats.bytes_total
    assert snapshot(dst) == snapshot(src)
    assert not leftovers(dst)

    # the seeded copy is a normal pull: the next sync has nothing to do
    again = sync.pull(s3, bucket, prefix, dst, seed_from=cache)
    assert (again.files_done, again.files_seeded) == (0, 0)
    assert again.files_skipped == again.files_total
    assert sync.push(s3, dst, bucket, prefix).files_done == 0


def test_seed_only_for_same_prefix_and_same_object(s3, bucket, prefix, tmp_path):
    src, cache = tmp_path / "src", tmp_path / "cache"
    write(src / "a.txt", "version 1")
    write(src / "b.txt", "stays")
    sync.push(s3, src, bucket, prefix)
    sync.pull(s3, bucket, prefix, cache)

    # another prefix with the same content: the cache's manifest is not for it
    other = prefix + "-other"
    sync.push(s3, src, bucket, other)
    stats = sync.pull(s3, bucket, other, tmp_path / "o", seed_from=cache)
    assert stats.files_seeded == 0 and stats.files_done == 2

    # the object changed since the cache was pulled: only the unchanged file is seeded
    write(src / "a.txt", "version 2!", mtime_ns=1_700_000_000_000_000_000)
    sync.push(s3, src, bucket, prefix)
    stats = sync.pull(s3, bucket, prefix, tmp_path / "dst", seed_from=cache)
    assert stats.files_seeded == 1 and stats.files_done == 2
    assert (tmp_path / "dst" / "a.txt").read_text() == "version 2!"
    assert snapshot(tmp_path / "dst") == snapshot(src)


# --------------------------------------------------------------------------
# large files through the CRT (multipart upload, ranged parallel download)
# --------------------------------------------------------------------------


def test_large_file_multipart_round_trip(s3, bucket, prefix, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    data = os.urandom(40 * MiB + 12345)
    write(src / "big.bin", data, mode=0o640, mtime_ns=1_650_000_000_987_654_321)
    write(src / "small.txt", "small")
    seen: list[int] = []
    stats = sync.push(s3, src, bucket, prefix, progress=lambda s: seen.append(s.bytes_done))
    assert stats.files_done == 2 and stats.bytes_done == len(data) + 5
    head = s3.head_object(Bucket=bucket, Key=f"{prefix}/big.bin")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-6")  # 8 MiB parts: really multipart
    assert head["Metadata"]["mode"] == "0640"

    stats = sync.pull(s3, bucket, prefix, dst)
    assert stats.files_done == 2
    assert (dst / "big.bin").read_bytes() == data
    assert snapshot(dst) == snapshot(src)
    assert sync.pull(s3, bucket, prefix, dst).files_done == 0
    assert sync.push(s3, dst, bucket, prefix).files_done == 0


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:  # renamed into place meanwhile
        return 0


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_cancel_mid_large_transfer_then_resume(s3, bucket, prefix, tmp_path, direction):
    src, dst = tmp_path / "src", tmp_path / "dst"
    blobs = {f"big{i}.bin": os.urandom(36 * MiB) for i in range(3)}
    for name, data in blobs.items():
        write(src / name, data)
    if direction == "pull":
        sync.push(s3, src, bucket, prefix)

    started = time.monotonic()

    def stop_soon() -> bool:  # mid-transfer: well after it started, long before it ends
        if direction == "pull":  # a pull can take well under a second: watch it write
            return any(_size(p) > 0 for p in leftovers(dst))
        return time.monotonic() - started > 0.3

    def run(**kw):
        if direction == "push":
            return sync.push(s3, src, bucket, prefix, **kw)
        return sync.pull(s3, bucket, prefix, dst, **kw)

    with pytest.raises(SyncCancelled) as info:
        run(should_stop=stop_soon)
    partial = info.value.stats
    assert partial.files_done < 3
    if direction == "pull":
        assert not leftovers(dst)  # no temporary or truncated files
        for p in dst.iterdir():
            assert p.read_bytes() == blobs[p.name]  # only complete files under final names
    else:
        for key in keys(s3, bucket, prefix):
            body = s3.get_object(Bucket=bucket, Key=f"{prefix}/{key}")["Body"].read()
            assert body == blobs[key]  # no partial objects (multipart uploads aborted)

    stats = run()
    assert stats.files_total == 3
    assert stats.files_skipped >= partial.files_done
    assert stats.files_done == 3 - stats.files_skipped
    if direction == "pull":
        assert snapshot(dst) == snapshot(src)
        assert not leftovers(dst)
    else:
        assert keys(s3, bucket, prefix) == set(blobs)


def _incomplete(manifest) -> bool:
    """A periodic save, not the final one (on a busy machine the pull may finish between
    two looks, and a kill then would find a complete manifest)."""
    try:
        return not _Manifest.read_raw(manifest)["complete"]
    except (OSError, ValueError, KeyError, TypeError):
        return False  # not there yet, or being replaced right now: look again


def test_pull_killed_mid_way_resumes_without_refetching(seaweed, s3, bucket, prefix, tmp_path):
    """kill -9 during a pull: the periodically saved manifest lets the next pull skip."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    for i in range(3000):
        write(src / f"d{i % 10}" / f"f{i:05d}.txt", f"file {i}\n" * 50)
    sync.push(s3, src, bucket, prefix)
    env = dict(
        os.environ,
        AWS_ACCESS_KEY_ID=seaweed.access_key,
        AWS_SECRET_ACCESS_KEY=seaweed.secret_key,
        PYTHONPATH=str(REPO),
    )
    cmd = [sys.executable, "-m", "activities.storage.cli", "pull", f"s3://{bucket}/{prefix}"]
    proc = subprocess.Popen(
        [*cmd, str(dst), "--endpoint", seaweed.endpoint, "--workers", "2"], env=env, cwd=REPO
    )
    manifest = tmp_path / ".dst.manifest.json"
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if manifest.exists() and manifest.stat().st_size > 5000 and _incomplete(manifest):
                break  # at least one periodic save with entries happened, not the last
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
    if proc.returncode == 0:
        pytest.skip("the pull finished before it could be killed")
    assert not _Manifest.read_raw(manifest)["complete"]

    stats = sync.pull(s3, bucket, prefix, dst)
    assert stats.files_skipped > 0
    assert stats.files_done + stats.files_skipped == stats.files_total == 3000
    assert snapshot(dst) == snapshot(src)
    assert not leftovers(dst)


# --------------------------------------------------------------------------
# error mapping of CRT failures
# --------------------------------------------------------------------------


def _wait(t):
    deadline = time.monotonic() + 30
    while not t.finished and time.monotonic() < deadline:
        time.sleep(0.01)
    return t


def test_crt_errors_map_to_the_same_storage_errors(seaweed, s3, bucket, tmp_path):
    ctx = _Ctx.make(s3, bucket, "p", tmp_path, "pull")
    engine = CrtEngine.for_client(s3)
    missing = f"no-such-bucket-{uuid.uuid4().hex[:8]}"

    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        t = _wait(engine.get(missing, "k", fd, lambda _t: None))
    finally:
        os.close(fd)
    assert isinstance(t.error, ClientError)
    assert t.error.response["Error"]["Code"] == "NoSuchBucket"
    assert isinstance(_map_error(t.error, ctx, "downloading"), StorageAccessError)

    with pytest.raises(ClientError):
        list(engine.list_pages(missing, ""))

    # a missing object is a per-file problem, not a sync-wide one
    t = _wait(engine.head(bucket, f"missing-{uuid.uuid4().hex}", lambda _t: None))
    assert isinstance(t.error, ClientError) and t.status == 404
    assert _map_error(t.error, ctx, "downloading") is None

    bad = CrtEngine.for_client(seaweed.client(secret_key="wrong-secret"))
    t = _wait(bad.put(bucket, "x", [], lambda _t: None, size=1, body=b"x"))
    mapped = _map_error(t.error, ctx, "uploading to")
    assert isinstance(mapped, StorageAccessError) and "credentials" in str(mapped)

    down = seaweed.client(connect_timeout=1, retries={"max_attempts": 1, "mode": "standard"})
    down.meta._endpoint_url = None  # not used: build an engine for a dead port instead
    dead = CrtEngine(
        f"http://127.0.0.1:{unused_port()}",
        "us-east-1",
        seaweed.access_key,
        seaweed.secret_key,
        None,
        connect_timeout_ms=1000,
        max_retries=0,
    )
    t = _wait(dead.put(bucket, "x", [], lambda _t: None, size=1, body=b"x"))
    assert isinstance(t.error, EndpointConnectionError)
    assert isinstance(_map_error(t.error, ctx, "uploading to"), StorageUnavailableError)


def test_server_down_mid_sync_is_unavailable(tmp_path):
    with SeaweedServer(tmp_path / "weed") as server:
        client = server.client(connect_timeout=1, retries={"max_attempts": 1, "mode": "standard"})
        client.create_bucket(Bucket="down")
        src = tmp_path / "src"
        for i in range(200):
            write(src / f"f{i}.txt", "x" * 1000)
        sync.push(client, src, "down", "p")
        calls = 0

        def kill_server_once() -> bool:
            nonlocal calls
            calls += 1
            if calls == 2:
                server.stop(kill=True)
            return False

        with pytest.raises(StorageUnavailableError):
            sync.pull(client, "down", "p", tmp_path / "dst", should_stop=kill_server_once)
        assert not leftovers(tmp_path / "dst")


def test_a_link_pushed_where_a_directory_was_does_not_block_pulls(s3, bucket, prefix, tmp_path):
    """A tree's user swaps a directory for a link and an rw push stores the link beside
    the directory's objects (rw keeps remote objects): no file system can hold both, so
    the directory is pulled, the link's object stays in storage, and the pull completes
    (else a notebook could never finish the pull its stop needs)."""
    tree = tmp_path / "tree"
    (tree / "d").mkdir(parents=True)
    (tree / "d" / "f").write_bytes(b"in d\n")
    sync.push(s3, tree, bucket, prefix)
    (tree / "d" / "f").unlink()
    (tree / "d").rmdir()
    (tree / "d").symlink_to("/etc")
    sync.push(s3, tree, bucket, prefix)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]}
    assert {f"{prefix}/d", f"{prefix}/d/f"} <= keys

    fresh = tmp_path / "fresh"
    stats = sync.pull(s3, bucket, prefix, fresh, delete=True)
    assert (fresh / "d" / "f").read_bytes() == b"in d\n" and not (fresh / "d").is_symlink()
    assert stats.files_failed == 0 and stats.files_skipped >= 1
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]}
    assert f"{prefix}/d" in keys  # untouched in storage
