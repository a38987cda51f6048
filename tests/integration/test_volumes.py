"""Volumes end to end: permission semantics (ro / rw / rwd), volumes that cannot be used,
storage going away while a notebook is stopping, and a host agent killed mid-pull.

Everything runs against the real stack (Temporal, SeaweedFS, workers, Docker)."""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from domain.ids import workspace_prefix
from tests.integration.conftest import BAD_KEYS_ALIAS, BAD_SECRET_KEY, Notebooks
from tests.integration.s3data import bucket_keys, make_bucket
from tests.support import eventually
from worker.stack import Stack

pytestmark = pytest.mark.docker

MiB = 1024 * 1024


# ---------------------------------------------------------------------------- helpers


def _exec(container, script: str) -> str:
    code, output = container.exec_run(["sh", "-c", script])
    assert code == 0, output.decode()
    return output.decode()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _host_dir(stack: Stack, nid: str) -> Path:
    return stack.data_dir / "hosts" / stack.host_name / "notebooks" / nid


@pytest.fixture()
def cleanup(notebooks: Notebooks) -> Iterator[list[str]]:
    """Notebook ids to delete (and wait DELETED) after the test, whatever happened."""
    ids: list[str] = []
    yield ids
    for nid in ids:
        if notebooks.get(nid).status_code == 200:
            notebooks.delete(nid)
    for nid in ids:
        notebooks.wait(nid, "DELETED", timeout=240)
        assert notebooks.containers(nid) == []


# ------------------------------------------------------------- permission semantics


def test_rwd_mirrors_rw_keeps_and_ro_never_pushes(
    notebooks: Notebooks, s3, stack: Stack, cleanup: list[str]
) -> None:
    rwd = make_bucket(
        s3,
        "rwd",
        {
            "p/keep.txt": b"keep\n",
            "p/gone.txt": b"gone\n",
            "p/sub/gone2.txt": b"gone too\n",
            "outside/x.txt": b"not under the volume's prefix\n",
        },
    )
    rw = make_bucket(s3, "rw", {"old.txt": b"v1\n", "removed.txt": b"still wanted remotely\n"})
    ro = make_bucket(s3, "ro", {"a.txt": b"a\n", "b.txt": b"b\n"})
    nb = notebooks.create(
        name="perms",
        volumes=[
            f"{rwd}@local/p:/workspace/rwd:rwd",
            f"{rw}@local:/workspace/rw:rw",
            {"bucket": ro, "alias": "local", "mount_path": "/workspace/ro", "permission": "ro"},
        ],
    )
    nid = nb["id"]
    cleanup.append(nid)
    notebooks.wait(nid, "RUNNING")
    [container] = notebooks.containers(nid)

    assert _exec(container, "cd /workspace/rwd && find . -type f | sort") == (
        "./gone.txt\n./keep.txt\n./sub/gone2.txt\n"
    )
    _exec(
        container,
        "rm /workspace/rwd/gone.txt && rm -r /workspace/rwd/sub"
        " && mkdir /workspace/rwd/new && echo fresh > /workspace/rwd/new/n.txt"
        " && echo v2 > /workspace/rw/old.txt && rm /workspace/rw/removed.txt"
        " && echo added > /workspace/rw/added.txt",
    )
    # ro: the mount refuses creating, changing and deleting files
    for script in (
        "echo no > /workspace/ro/new.txt",
        "echo no >> /workspace/ro/a.txt",
        "rm /workspace/ro/b.txt",
        "mkdir /workspace/ro/d",
    ):
        code, output = container.exec_run(["sh", "-c", script])
        assert code != 0, script
        assert b"Read-only file system" in output, output
    assert _exec(container, "cat /workspace/ro/a.txt /workspace/ro/b.txt") == "a\nb\n"

    # Someone else changes the ro bucket while the notebook runs: the stop must not undo it.
    s3.put_object(Bucket=ro, Key="a.txt", Body=b"a changed remotely\n")
    s3.delete_object(Bucket=ro, Key="b.txt")
    s3.put_object(Bucket=ro, Key="c.txt", Body=b"c added remotely\n")
    ro_before_stop = bucket_keys(s3, ro)

    assert notebooks.command(nid, "stop").status_code == 202
    nb = notebooks.wait(nid, "STOPPED")
    assert nb["status"]["info"]["code"] == "STOPPED_BY_USER"

    # rwd: the remote prefix mirrors the volume (deletions included), nothing outside it moves
    assert bucket_keys(s3, rwd) == {
        "p/keep.txt": b"keep\n",
        "p/new/n.txt": b"fresh\n",
        "outside/x.txt": b"not under the volume's prefix\n",
    }
    # rw: new and changed files pushed, the file deleted in the notebook kept remotely
    assert bucket_keys(s3, rw) == {
        "old.txt": b"v2\n",
        "removed.txt": b"still wanted remotely\n",
        "added.txt": b"added\n",
    }
    # ro: never pushed, the remote changes stand
    assert bucket_keys(s3, ro) == ro_before_stop
    vols = nb["status"]["volumes"]
    assert [v["permission"] for v in vols] == ["rwd", "rw", "ro"]
    assert vols[0]["last_sync"]["direction"] == "push"
    assert vols[0]["last_sync"]["files_deleted"] == 2, vols[0]
    assert vols[1]["last_sync"]["direction"] == "push"
    assert vols[1]["last_sync"]["files_deleted"] == 0, vols[1]
    assert vols[2]["last_sync"]["direction"] == "pull", vols[2]  # the start's pull, no push

    # Next start: each volume is pulled again from what storage now holds.
    assert notebooks.command(nid, "start").status_code == 202
    notebooks.wait(nid, "RUNNING")
    [container] = notebooks.containers(nid)
    assert _exec(container, "cd /workspace/rwd && find . -type f | sort") == (
        "./keep.txt\n./new/n.txt\n"
    )
    assert _exec(container, "cd /workspace/rw && find . -type f | sort") == (
        "./added.txt\n./old.txt\n./removed.txt\n"
    )
    assert _exec(container, "cd /workspace/ro && find . -type f | sort") == "./a.txt\n./c.txt\n"
    assert _exec(container, "cat /workspace/ro/a.txt") == "a changed remotely\n"


# -------------------------------------------------------------------- bad volumes

# test_api already covers: an unknown alias in the string form, /etc/passwd,
# /workspace/../etc and /workspace/a + /workspace/a/b. These are the other ways to miss.


@pytest.mark.parametrize(
    ("volumes", "field", "words"),
    [
        (
            [
                "data@local:/workspace/d:ro",
                {"bucket": "x1y", "alias": "nowhere", "mount_path": "/workspace/e"},
            ],
            "volumes[1].alias",
            "unknown storage alias",
        ),
        (["data@local:/etc"], "volumes[0].mount_path", "/workspace"),
        (["data@local:/workspace"], "volumes[0].mount_path", "not /workspace itself"),
        (["data@local:/workspace/"], "volumes[0].mount_path", "/workspace"),
        (["data@local:/workspace/./d"], "volumes[0].mount_path", "'.'"),
        (["data@local:/workspacex/d"], "volumes[0].mount_path", "/workspace"),
        (["data@local:workspace/d"], "volumes[0].mount_path", "absolute"),
        (
            ["data@local:/workspace/a/b:rw", "other@local:/workspace/a"],
            "volumes",
            "nested",
        ),
        (["data@local:/workspace/a:rw", "other@local:/workspace/a:ro"], "volumes", "share"),
        (["data@local/../up:/workspace/d"], "volumes[0].prefix", ".."),
    ],
)
def test_bad_volumes_are_422_naming_the_field(notebooks: Notebooks, volumes, field, words) -> None:
    r = notebooks.post(name="badvol", volumes=volumes)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["field"] == field, body
    assert words in body["error"], body


def _assert_failed_data_sync(notebooks: Notebooks, stack: Stack, nid: str, *names: str) -> dict:
    t0 = time.monotonic()
    nb = notebooks.wait(nid, "FAILED", "ERROR", "RUNNING", timeout=180)
    info = nb["status"]["info"]
    assert nb["status"]["state"] == "FAILED", nb["status"]
    assert info["code"] == "DATA_SYNC_FAILED", info
    for name in names:
        assert name in info["message"], info
    # a user's mistake is not retried like an outage (which takes start_sync_attempts)
    assert time.monotonic() - t0 < 60
    assert notebooks.containers(nid) == []
    assert not _host_dir(stack, nid).exists()
    return nb


def test_missing_bucket_fails_naming_the_volume(
    notebooks: Notebooks, s3, stack: Stack, cleanup: list[str]
) -> None:
    good = make_bucket(s3, "good", {"x.txt": b"x\n"})
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    nb = notebooks.create(
        name="nobucket-rw",
        volumes=[f"{good}@local:/workspace/good:rw", f"{missing}@local/sub:/workspace/results:rw"],
    )
    nid = nb["id"]
    cleanup.append(nid)
    nb = _assert_failed_data_sync(notebooks, stack, nid, "/workspace/results", missing)
    assert nb["status"]["volumes"][1]["pulled"] is False  # (the good one may have been)
    # nothing ran, so nothing was pushed: the good bucket is as it was, the missing one
    # was not created
    assert bucket_keys(s3, good) == {"x.txt": b"x\n"}
    assert missing not in {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert not bucket_keys(s3, "ainb-workspaces", workspace_prefix(notebooks.project, nid))


def test_bad_credentials_fail_naming_the_volume(
    notebooks: Notebooks, s3, stack: Stack, cleanup: list[str]
) -> None:
    bucket = make_bucket(s3, "creds", {"x.txt": b"x\n"})  # exists: only the keys are wrong
    nb = notebooks.create(
        name="badkeys", volumes=[f"{bucket}@{BAD_KEYS_ALIAS}:/workspace/secret:ro"]
    )
    nid = nb["id"]
    cleanup.append(nid)
    nb = _assert_failed_data_sync(notebooks, stack, nid, "/workspace/secret", bucket)
    assert BAD_SECRET_KEY not in json.dumps(nb)
    assert bucket_keys(s3, bucket) == {"x.txt": b"x\n"}


# ------------------------------------------------------- storage down while stopping


def _s3_running(stack: Stack) -> bool:
    proc = stack.procs.get("s3")
    return proc is not None and proc.poll() is None


def test_storage_outage_while_stopping_keeps_retrying_then_saves_everything(
    notebooks: Notebooks, s3, stack: Stack, cleanup: list[str]
) -> None:
    bucket = make_bucket(s3, "outage", {"before.txt": b"before\n"})
    nb = notebooks.create(name="outage", volumes=[f"{bucket}@local:/workspace/out:rw"])
    nid = nb["id"]
    cleanup.append(nid)
    notebooks.wait(nid, "RUNNING")
    [container] = notebooks.containers(nid)
    written = {
        "out/result.bin": 3 * MiB,
        "out/deep/er/r.bin": 100_000,
        "proj/model.bin": 5 * MiB,
        "notes.bin": 1234,
    }
    script = " && ".join(
        f"mkdir -p $(dirname /workspace/{p}) && head -c {n} /dev/urandom > /workspace/{p}"
        for p, n in written.items()
    )
    _exec(container, script)
    sums = dict(
        reversed(line.split())
        for line in _exec(container, "cd /workspace && sha256sum " + " ".join(written)).splitlines()
    )
    assert set(sums) == set(written)

    try:
        stack.kill("s3")  # SIGKILL: storage vanishes
        assert notebooks.command(nid, "stop").status_code == 202
        # The stop cannot finish: STOPPING with SYNC_RETRYING, for as long as storage is down.
        deadline = time.monotonic() + 90
        while True:
            status = notebooks.get(nid).json()["status"]
            assert status["state"] == "STOPPING", status
            if status["info"]["code"] == "SYNC_RETRYING":
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
        assert "/workspace/out" in status["info"]["message"], status
        retrying_since = time.monotonic()
        while time.monotonic() - retrying_since < 12:
            status = notebooks.get(nid).json()["status"]
            assert status["state"] == "STOPPING", status
            assert status["info"]["code"] == "SYNC_RETRYING", status
            time.sleep(0.5)
        # The container is stopped first; the data waits on the host until storage takes it.
        assert notebooks.containers(nid) == []
        host = _host_dir(stack, nid)
        assert (host / "volumes" / "0" / "result.bin").exists()
        assert (host / "workspace" / "proj" / "model.bin").exists()
        stack.start_s3()  # same ports, same data directory
        nb = notebooks.wait(nid, "STOPPED", timeout=240)
    finally:
        if not _s3_running(stack):
            stack.start_s3()

    assert nb["status"]["info"]["code"] == "STOPPED_BY_USER"
    vol = bucket_keys(s3, bucket)
    assert vol["before.txt"] == b"before\n"
    ws_prefix = workspace_prefix(notebooks.project, nid) + "/"
    ws = {k[len(ws_prefix) :]: v for k, v in bucket_keys(s3, "ainb-workspaces", ws_prefix).items()}
    for path in written:
        if path.startswith("out/"):
            got = vol[path[len("out/") :]]
        else:
            got = ws[path]
        assert len(got) == written[path] and _sha(got) == sums[path], path
    assert not any(k.startswith("out/") for k in ws)  # the volume is not in the workspace
    assert not _host_dir(stack, nid).exists()


# ------------------------------------------------- host agent killed in a large pull


def test_host_agent_killed_mid_pull_resumes_without_starting_over(
    notebooks: Notebooks, s3, stack: Stack, cleanup: list[str]
) -> None:
    # 520 small files (sorted first), then 96 files of 16 MiB; the agent is killed while
    # the large files are coming in. (With 40, many transfers in flight could finish
    # them all within one look of the loop below.) What the killed pull completed is
    # skipped by the next one, whether its manifest recorded it yet or not (then it is
    # compared by ETag).
    small = {f"a/small-{i:03d}.txt": f"small file {i}\n".encode() * 64 for i in range(520)}
    large_names = [f"b/part-{i:03d}.bin" for i in range(96)]
    large_size = 16 * MiB
    bucket = f"bigpull-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    expected = {key: _sha(body) for key, body in small.items()}
    sizes = {key: len(body) for key, body in small.items()}

    def upload(key: str) -> None:
        body = small[key] if key in small else os.urandom(large_size)
        expected[key], sizes[key] = _sha(body), len(body)
        s3.put_object(Bucket=bucket, Key=key, Body=body)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(upload, [*small, *large_names]))
    count, total = len(expected), sum(sizes.values())

    nb = notebooks.create(name="bigpull", volumes=[f"{bucket}@local:/workspace/big:ro"])
    nid = nb["id"]
    cleanup.append(nid)
    volumes = _host_dir(stack, nid) / "volumes"
    local, manifest = volumes / "0", volumes / ".0.manifest.json"

    def large_done() -> set[str]:
        # Files are written to temporary names and renamed: a final name is a whole file.
        try:
            return {f"b/{n}" for n in os.listdir(local / "b")} & set(large_names)
        except FileNotFoundError:
            return set()

    def complete() -> set[str]:
        return {
            str(Path(d, n).relative_to(local))
            for d, _, names in os.walk(local)
            for n in names
            if not n.startswith(".ainb-tmp-")
        }

    def recorded() -> dict[str, dict]:
        try:
            return json.loads(manifest.read_text())["entries"]
        except (FileNotFoundError, ValueError, KeyError):
            return {}

    def some_large_done() -> set[str]:
        done = large_done()
        if len(done) == len(large_names):
            pytest.fail("the pull finished before the test could kill the agent mid-way")
        return done

    eventually(
        some_large_done,
        timeout=180,
        interval=0.005,
        what="the pull to get half-way",
        detail=lambda: (len(complete()), len(recorded()), notebooks.get(nid).json()["status"]),
    )
    stack.kill("host-agent")  # SIGKILL, in the middle of the large files
    large_at_kill = large_done()
    on_disk = complete()
    data = json.loads(manifest.read_text())
    assert data["complete"] is False
    recorded_at_kill = set(data["entries"])
    assert recorded_at_kill <= on_disk <= set(expected)
    assert 0 < len(large_at_kill) < len(large_names)
    assert notebooks.get(nid).json()["status"]["state"] == "STARTING"

    stack.start_host_agent()
    nb = notebooks.wait(nid, "RUNNING", timeout=300)
    [container] = notebooks.containers(nid)

    # Every byte is there, exactly, and nothing else (no temporary file) is visible.
    out = _exec(container, "cd /workspace/big && find . -type f -print0 | xargs -0 sha256sum")
    got = {
        path.removeprefix("./"): digest for digest, path in (ln.split() for ln in out.splitlines())
    }
    assert got == expected

    # The retried pull did not start over: it skips what the killed attempt recorded in its
    # manifest, and also what it had placed without recording yet (same bytes as the object).
    sync = nb["status"]["volumes"][0]["last_sync"]
    print(
        f"\nat kill: {len(large_at_kill)}/{len(large_names)} large files and {len(on_disk)} "
        f"files in all complete, {len(recorded_at_kill)} recorded; resumed pull: {sync}"
    )
    assert sync["direction"] == "pull" and sync["state"] == "done", sync
    assert sync["files_total"] == count and sync["bytes_total"] == total, sync
    assert sync["files_failed"] == 0, sync
    # (more files may have completed between the last look and the kill: at least these)
    assert len(on_disk) <= sync["files_skipped"] < count, (len(on_disk), sync)
    assert sync["files_done"] == count - sync["files_skipped"], sync
    assert 0 < sync["bytes_done"] < sync["bytes_total"]

    # Files the killed attempt had complete but not recorded are identical to storage: they
    # are no user's work and must not be "rescued" into the workspace (which the stop would
    # save, copying the volume's data into the workspace bucket).
    code, out = container.exec_run(
        ["sh", "-c", "cd /workspace/.ainb-preserved 2>/dev/null && find . -type f | wc -l"]
    )
    copies = int(out.decode().strip()) if code == 0 and out.strip() else 0
    assert copies == 0, f"{copies} identical file(s) were set aside: {sync['message']!r}"
    assert "preserved" not in sync["message"], sync
